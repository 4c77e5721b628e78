use std::path::Path;

use super::*;

fn parse(source: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/wattedge/wattedge.toml"), source)
}

const MINIMAL: &str = r#"
[host]
state_dir = "/tmp/wattedge-state"

[guests.correlator]
component = "builtin:correlator"
schedule = "every 60s"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.host.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(config.host.secrets_file, Path::new("/tmp/wattedge-state/secrets.toml"));
    assert!(matches!(config.influx, InfluxConfig::Embedded { retention: Some(r) } if r == DEFAULT_RETENTION));
    let guest = &config.guests[0];
    assert_eq!(guest.component, ComponentSource::Builtin("correlator".into()));
    assert!(matches!(guest.schedule, Schedule::Every(d) if d.as_secs() == 60));
    assert_eq!(guest.memory_limit, DEFAULT_MEMORY_LIMIT);
    assert_eq!(guest.run_timeout, DEFAULT_RUN_TIMEOUT);
    assert!(guest.grants.http.is_empty(), "grants default to nothing");
    assert_eq!(guest.compile, crate::compile::engine::CompileMode::Optimized);
}

#[test]
fn a_compile_mode_is_read_and_a_wrong_one_is_named_with_its_line() {
    let quick = parse(&format!("{MINIMAL}compile = \"quick\"\n")).unwrap();
    assert_eq!(quick.guests[0].compile, crate::compile::engine::CompileMode::Quick);
    let err = parse(&format!("{MINIMAL}compile = \"fast\"\n")).unwrap_err();
    assert_eq!(err.line, Some(8), "{err}");
    assert!(err.message.contains("quick") && err.message.contains("optimized"), "{}", err.message);
}

#[test]
fn a_board_gives_its_engine_settings_and_default_guest_limits() {
    let source = MINIMAL.replace("[host]\n", "[host]\nboard = \"pi5\"\n");
    let config = parse(&source).unwrap();
    let pi5 = crate::compile::board::profile("pi5").unwrap();
    assert_eq!(config.host.engine_limits(), pi5.limits);
    assert_eq!(config.guests[0].memory_limit, 32 << 20, "pi5's default, not {DEFAULT_MEMORY_LIMIT}");
    let armv7 = parse(&MINIMAL.replace("[host]\n", "[host]\nboard = \"armv7\"\n")).unwrap();
    assert_eq!(armv7.host.engine_limits().memory_reservation, 16 << 20);
    assert_eq!(armv7.guests[0].run_timeout, Duration::from_secs(120), "armv7's default");
    // A guest's own limits win over the board's.
    let own = parse(&format!("{source}memory_limit = \"8MiB\"\nrun_timeout = \"5s\"\n")).unwrap();
    assert_eq!((own.guests[0].memory_limit, own.guests[0].run_timeout), (8 << 20, Duration::from_secs(5)));
    assert_eq!(parse(MINIMAL).unwrap().host.engine_limits(), EngineLimits::native(), "no board: this machine's");
}

#[test]
fn an_unknown_board_names_the_key_and_the_profiles() {
    let err = parse(&MINIMAL.replace("[host]\n", "[host]\nboard = \"pi9\"\n")).unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.message.starts_with("host.board: no board profile named \"pi9\""), "{}", err.message);
    assert!(err.message.contains("pi-zero-2w, pi3, pi4, pi5, armv7"), "{}", err.message);
    assert!(err.message.contains("or \"auto\""), "{}", err.message);
}

#[test]
fn board_auto_uses_the_detected_profile_and_keeps_what_it_found() {
    let config = parse(&MINIMAL.replace("[host]\n", "[host]\nboard = \"auto\"\n")).unwrap();
    let found = config.host.board_detection.as_ref().expect("auto keeps its detection");
    assert_eq!(config.host.board.as_ref().map(|b| b.name.as_str()), found.profile);
    assert_eq!(found.arch, std::env::consts::ARCH);
    if cfg!(target_arch = "x86_64") {
        // The build machine: no board profile, whatever a model file says.
        assert_eq!(config.host.engine_limits(), EngineLimits::native());
        assert_eq!(config.guests[0].memory_limit, DEFAULT_MEMORY_LIMIT);
    }
    assert!(parse(MINIMAL).unwrap().host.board_detection.is_none(), "no board: nothing detected");
}

#[test]
fn durations_of_ages_are_refused_not_left_to_overflow_the_clock() {
    for (key, value) in [("run_timeout", "300000000000y"), ("schedule", "every 300000000000y")] {
        let source =
            format!("{MINIMAL}{key} = \"{value}\"\n").replace("schedule = \"every 60s\"\nschedule", "schedule");
        let err = parse(&source).unwrap_err();
        assert!(err.message.contains(&format!("guests.correlator.{key}")), "{}", err.message);
        assert!(err.message.contains("100 years"), "{}", err.message);
    }
}

#[test]
fn a_bad_grant_names_the_line_of_its_key() {
    let source = format!("{MINIMAL}\n[guests.correlator.grants]\ninflux_read = [\"a\"]\nhttp = [\"ftp://x\"]\n");
    let err = parse(&source).unwrap_err();
    assert_eq!(err.line, Some(11), "{err}");
    assert!(err.message.starts_with("guests.correlator.grants.http:"), "{}", err.message);
    let inline =
        MINIMAL.replace("schedule = \"every 60s\"", "schedule = \"every 60s\"\ngrants = { influx_write = [\"\"] }");
    let err = parse(&inline).unwrap_err();
    assert_eq!(err.line, Some(8), "inline grants: the grants line: {err}");
    assert!(err.message.contains("grants.influx_write"), "{}", err.message);
}

#[test]
fn grants_are_parsed_once_at_load_into_typed_entries() {
    let source = format!(
        "{MINIMAL}\n[guests.correlator.grants]\nhttp = [\"private:https://nas.lan:8123\"]\n\
         secrets = {{ \"nas.token\" = [\"nas.lan\"] }}\n"
    );
    let grants = &parse(&source).unwrap().guests[0].grants;
    let nas =
        grants::HostGrant { scheme: Some("https".into()), host: "nas.lan".into(), port: Some(8123), private: true };
    assert_eq!(grants.http, [nas]);
    assert_eq!(grants.secrets["nas.token"], [grants::HostGrant::parse("nas.lan").unwrap()]);
    let empty = format!("{MINIMAL}\n[guests.correlator.grants]\nsecrets = {{ \"nas.token\" = [] }}\n");
    let err = parse(&empty).unwrap_err();
    assert!(err.message.contains("must name at least one host"), "{}", err.message);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let source = "[host]\nstate_dir = \"/tmp/x\"\nadmin_port = 9100\n";
    let err = parse(source).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.line, Some(3), "{text}");
    assert!(text.starts_with("/etc/wattedge/wattedge.toml:3:"), "{text}");
    assert!(text.contains("admin_port"), "{text}");
    assert!(text.contains("remove or rename"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn unknown_key_in_guest_section_is_an_error() {
    let source = format!("{MINIMAL}shedule = \"every 1m\"\n");
    let text = parse(&source).unwrap_err().to_string();
    assert!(text.contains("shedule") && text.contains(":8:"), "{text}");
}

#[test]
fn malformed_schedule_names_key_and_fix() {
    let source = MINIMAL.replace("every 60s", "every fortnight-ish");
    let err = parse(&source).unwrap_err();
    assert_eq!(err.line, Some(7));
    assert!(err.message.contains("guests.correlator.schedule"), "{}", err.message);
    assert!(err.message.contains("*/15 * * * *"), "{}", err.message);
    let cron_err = parse(&MINIMAL.replace("every 60s", "61 * * * *")).unwrap_err();
    assert!(cron_err.message.contains("invalid cron"), "{}", cron_err.message);
    let six = parse(&MINIMAL.replace("every 60s", "0 0 * * * *")).unwrap_err();
    assert!(six.message.contains("5 fields"), "{}", six.message);
}

#[test]
fn cron_and_interval_schedules_compute_next_runs() {
    let every = Schedule::parse("every 15m").unwrap();
    let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    assert_eq!(every.next_after(t0), Some(t0 + std::time::Duration::from_secs(900)));
    let cron = Schedule::parse("*/5 * * * *").unwrap();
    let next = cron.next_after(t0).unwrap();
    let secs = next.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(next > t0 && secs.is_multiple_of(300), "next {secs} must be on a 5-minute boundary");
}

#[test]
fn missing_component_file_is_reported_with_path() {
    let source = MINIMAL.replace("builtin:correlator", "guests/nope.wasm");
    let err = parse(&source).unwrap_err();
    assert_eq!(err.line, Some(6));
    assert!(err.message.contains("/etc/wattedge/guests/nope.wasm does not exist"), "{}", err.message);
}

#[test]
fn unknown_builtin_lists_the_builtins() {
    let err = parse(&MINIMAL.replace("builtin:correlator", "builtin:corelator")).unwrap_err();
    assert!(err.message.contains("builtin:correlator"), "{}", err.message);
}

#[test]
fn grant_for_a_guest_that_does_not_exist() {
    let source = format!("{MINIMAL}\n[guests.wattime.grants]\nhttp = [\"api.watttime.org\"]\n");
    let err = parse(&source).unwrap_err();
    assert_eq!(err.line, Some(9), "{err}");
    assert!(err.message.contains("guest that does not exist"), "{}", err.message);
    assert!(err.message.contains("wattime"), "{}", err.message);
}

#[test]
fn sizes_durations_and_config_values() {
    assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
    assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
    assert!(parse_size("16 parsecs").unwrap_err().contains("unknown size unit"));
    assert_eq!(parse_duration("1h 30m").unwrap().as_secs(), 5400);
    let source =
        format!("{MINIMAL}config = {{ lookback = \"5m\", min_delta_w = 10.5, domains = [\"switch\", \"light\"] }}\n");
    let config = parse(&source).unwrap();
    let values: std::collections::BTreeMap<_, _> = config.guests[0].config.iter().cloned().collect();
    assert_eq!(values["domains"], "switch,light");
    assert_eq!(values["min_delta_w"], "10.5");
}

#[test]
fn guests_keep_file_order_and_bad_backend_is_explained() {
    let source =
        "[guests.zeta]\ncomponent = \"builtin:watttime\"\n[guests.alpha]\ncomponent = \"builtin:correlator\"\n";
    let names: Vec<_> = parse(source).unwrap().guests.into_iter().map(|g| g.name).collect();
    assert_eq!(names, ["zeta", "alpha"]);
    let err = parse("[influx]\nbackend = \"mongo\"\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("\"embedded\", \"v1\" or \"v2\""), "{}", err.message);
}

#[test]
fn the_shipped_default_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wattedge.toml");
    let config = Config::load(&path).unwrap();
    let names: Vec<_> = config.guests.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["watttime", "wattivahti", "correlator"]);
}
