// wattedge status page: fetches /guests and /api/store every few seconds and
// re-renders in place. Guest-provided text is untrusted: it only ever enters
// the page as text nodes (Node.append / textContent), never as markup.
"use strict";
(() => {
  const REFRESH_MS = 5000;
  const SERIES_REFRESH_MS = 60000;
  const FORECAST = "carbon_intensity_forecast";
  const LBS_MWH_TO_G_KWH = 0.4536;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const STATES = {
    ok: { words: "ok", icon: "check", todo: "" },
    standby: {
      words: "credentials needed", icon: "key",
      todo: "The guest waits for something you must provide and leaves standby by itself at its next run once it is set.",
    },
    degraded: {
      words: "degraded", icon: "warn",
      todo: "The last run failed (an error, a trap or an overrun time limit) or the guest reported a problem. It tries again at its next trigger with a fresh instance after a trap; if it keeps failing, check the detail and the host log (journalctl -u wattedge).",
    },
    failed: {
      words: "failed", icon: "cross",
      todo: "The component did not load or its init failed, so it cannot run. Fix what the detail names (the guest's config or component file); the host log (journalctl -u wattedge) has the details.",
    },
    starting: { words: "starting", icon: "clock", todo: "The component is loading or its init has not finished yet." },
  };

  // Static icon shapes (trusted constants, built with createElementNS).
  const ICONS = {
    check: [["circle", { cx: 12, cy: 12, r: 10 }], ["path", { d: "M7 12.5l3.2 3.2L17 9" }]],
    key: [["circle", { cx: 7.5, cy: 15.5, r: 4.5 }], ["path", { d: "M10.7 12.3L20 3M16.5 6.5l3 3M14 9l2.5 2.5" }]],
    warn: [["path", { d: "M12 3L1.8 20.5h20.4z" }], ["path", { d: "M12 9.5v5M12 17.5v.5" }]],
    cross: [["circle", { cx: 12, cy: 12, r: 10 }], ["path", { d: "M8.5 8.5l7 7M15.5 8.5l-7 7" }]],
    clock: [["circle", { cx: 12, cy: 12, r: 10 }], ["path", { d: "M12 6.5V12l3.5 2.5" }]],
  };

  const OUTCOMES = { ok: "ok", error: "error", trap: "trapped", timeout: "timed out" };
  const seriesCache = new Map(); // guest name -> { at, points }
  let lastGood = null;

  // ---- DOM helpers -------------------------------------------------------

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid !== null && kid !== undefined && kid !== false) node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }

  function svg(tag, attrs, ...kids) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const kid of kids) node.append(kid);
    return node;
  }

  function icon(name) {
    const shapes = ICONS[name].map(([tag, attrs]) => svg(tag, attrs));
    return svg("svg", { class: "icon", viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" }, ...shapes);
  }

  function fact(label, ...value) {
    return [el("dt", null, label), el("dd", null, ...value)];
  }

  // ---- formatting --------------------------------------------------------

  function num(value) {
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return String(Math.round(value * 1000) / 1000);
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const s = Math.round((Date.now() - t) / 1000);
    const abs = Math.abs(s);
    const text = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min`
      : abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} days`;
    return s >= 0 ? `${text} ago` : `in ${text}`;
  }

  function when(iso) {
    const local = new Date(iso);
    const title = Number.isNaN(local.getTime()) ? String(iso) : local.toLocaleString();
    return el("time", { datetime: iso, title }, ago(iso));
  }

  // Commands the detail asks the reader to run, e.g. `wattedge secrets set x`.
  function commands(detail) {
    const found = [];
    for (const m of detail.matchAll(/`(wattedge [^`\n]+)`/g)) found.push(m[1].trim());
    for (const m of detail.matchAll(/wattedge secrets set [A-Za-z0-9._-]+/g)) found.push(m[0]);
    return [...new Set(found)];
  }

  // ---- guest cards -------------------------------------------------------

  function badge(state) {
    const info = STATES[state] || { words: String(state), icon: "warn" };
    return el("span", { class: `badge state-${STATES[state] ? state : "unknown"}` }, icon(info.icon),
      el("span", { class: "words" }, info.words));
  }

  function detailBlock(detail, name, open) {
    const lines = detail.split("\n");
    const first = lines[0];
    if (lines.length === 1 && first.length <= 300) return el("p", { class: "detail" }, detail);
    const more = el("details", { "data-guest": name }, el("summary", null, "Full detail"),
      el("pre", { class: "detail-full" }, detail));
    if (open) more.open = true;
    return el("div", null, el("p", { class: "detail" }, first.length > 300 ? `${first.slice(0, 300)}…` : first), more);
  }

  function commandLine(cmd) {
    const code = el("code", { class: "cmd" }, cmd);
    const button = el("button", { type: "button", class: "copy", "aria-label": `Copy the command ${cmd}` }, "Copy");
    button.addEventListener("click", () => copy(cmd, code, button));
    return el("div", { class: "cmd-line" }, code, button);
  }

  function copy(text, code, button) {
    const done = () => { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => selectText(code));
    } else {
      selectText(code);
      button.textContent = "Selected: copy it";
    }
  }

  function selectText(node) {
    const range = document.createRange();
    range.selectNodeContents(node);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function todo(g) {
    const info = STATES[g.state];
    const cmds = g.detail ? commands(g.detail) : [];
    if ((!info || !info.todo) && cmds.length === 0) return null;
    const intro = cmds.length ? "Run this on the host; it asks for the value:" : "";
    return el("div", { class: "todo" }, el("p", null, el("strong", null, "What to do: "), info ? info.todo : "", " ", intro),
      cmds.map(commandLine));
  }

  function lastRun(run) {
    if (!run) return "not yet";
    const outcome = OUTCOMES[run.outcome] || run.outcome;
    return [`${run.trigger}, ${outcome}, `, when(run.finished)];
  }

  function versionFacts(g) {
    if (!g.version) return [];
    const value = [el("code", { title: g.version }, g.version.slice(0, 12))];
    if (g.swapped_at) value.push(", swapped ", when(g.swapped_at));
    if (g.previous_version) value.push(el("span", { class: "muted" }, ` (previous ${g.previous_version.slice(0, 12)})`));
    const rejected = g.last_swap_error ? fact("Last swap", `rejected: ${g.last_swap_error}`) : [];
    return [fact("Version", ...value), rejected];
  }

  // A guest following an oci:// tag: the reference, the digest running,
  // the rollout state ("following", "gating sha256:…", "rolled back from
  // sha256:…"), when the last tag move was noticed, and the last refusal.
  function rolloutFacts(r) {
    if (!r) return [];
    const digest = r.digest ? el("code", { title: r.digest }, r.digest.slice(0, 19)) : "not resolved yet";
    return [
      fact("Follows", el("code", null, r.reference)),
      fact("Rollout", r.state, ", running ", digest),
      r.noticed ? fact("Tag moved", "noticed ", when(r.noticed)) : [],
      r.last_refusal ? fact("Last refusal", r.last_refusal) : [],
    ];
  }

  function facts(g) {
    const runs = `${g.runs} run${g.runs === 1 ? "" : "s"}, ${g.failures} failed` + (g.consecutive_failures ? ` (${g.consecutive_failures} in a row)` : "");
    return el("dl", { class: "facts" },
      versionFacts(g),
      rolloutFacts(g.rollout),
      fact("Schedule", g.schedule),
      fact("Last run", lastRun(g.last_run)),
      fact("Last success", g.last_success ? when(g.last_success) : "never"),
      g.next_run ? fact("Next run", when(g.next_run)) : [],
      fact("Runs", runs),
      fact("Points written", String(g.points_written)));
  }

  function counters(g) {
    const entries = Object.entries(g.counters || {});
    if (!entries.length) return null;
    const shown = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : num(v));
    return el("section", { class: "sub" }, el("h3", null, "Counters"),
      el("dl", { class: "facts counters" }, entries.map(([k, v]) => fact(k, shown(v)))));
  }

  // ---- latest values -----------------------------------------------------

  function gramsPerKwh(fields) {
    if (typeof fields.carbon_intensity_gco2_kwh === "number") return fields.carbon_intensity_gco2_kwh;
    if (typeof fields.moer_lbs_mwh === "number") return fields.moer_lbs_mwh * LBS_MWH_TO_G_KWH;
    return null;
  }

  function headline(measurement, p) {
    const f = p.fields;
    if (measurement === "carbon_intensity" && gramsPerKwh(f) !== null) {
      const extra = ["forecast_1h", "forecast_24h"].filter((k) => typeof f[k] === "number")
        .map((k) => `${k === "forecast_1h" ? "in 1 h" : "in 24 h"}: ${num(f[k])}`);
      return ["Carbon intensity", el("span", { class: "big" }, num(gramsPerKwh(f))), " g CO₂/kWh",
        extra.length ? el("span", { class: "muted" }, ` (${extra.join(", ")})`) : null];
    }
    if (measurement === "electricity_consumption" && typeof f.consumption_kwh === "number") {
      return ["Consumption", el("span", { class: "big" }, num(f.consumption_kwh)), " kWh"];
    }
    if (measurement === "event_energy_correlation" && typeof f.power_delta_w === "number") {
      const pct = typeof f.power_delta_pct === "number" ? ` (${num(f.power_delta_pct)} %)` : "";
      const what = `${p.tags.entity_id || "?"}: ${p.tags.previous_state || "?"} → ${p.tags.state || "?"}, `;
      return ["Last correlation", `${what}`, el("span", { class: "big" }, num(f.power_delta_w)), ` W${pct}`];
    }
    return null;
  }

  function rawLine(p) {
    const tags = Object.entries(p.tags).map(([k, v]) => `${k}=${v}`);
    const fields = Object.entries(p.fields).map(([k, v]) => `${k}=${typeof v === "string" ? JSON.stringify(v) : num(v)}`);
    return el("p", { class: "raw" }, [...tags, ...fields].join(" · "));
  }

  function latestItem(measurement, p) {
    const head = headline(measurement, p);
    const title = head ? el("span", { class: "label" }, head[0]) : el("span", { class: "label" }, measurement);
    const value = head ? el("span", { class: "value" }, ...head.slice(1)) : null;
    return el("li", null, el("p", { class: "latest-head" }, title, " ", value), el("p", { class: "muted small" },
      el("span", null, measurement), ", ", when(p.time)), rawLine(p));
  }

  function sparkline(points) {
    const values = points.map((p) => ({ t: Date.parse(p.time), v: gramsPerKwh(p.fields) }))
      .filter((p) => p.v !== null && !Number.isNaN(p.t));
    if (values.length < 2) return null;
    const [w, h, pad] = [300, 60, 4];
    const t0 = values[0].t, t1 = values[values.length - 1].t;
    const lo = Math.min(...values.map((p) => p.v)), hi = Math.max(...values.map((p) => p.v));
    const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - 2 * pad);
    const y = (v) => h - pad - ((v - lo) / Math.max(1e-9, hi - lo)) * (h - 2 * pad);
    const coords = values.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    const summary = `Forecast of ${values.length} points until ${new Date(t1).toLocaleString()}: from ${num(lo)} to ${num(hi)} g CO₂/kWh`;
    const now = Date.now();
    const chart = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": summary, preserveAspectRatio: "none" },
      svg("polyline", { points: coords, fill: "none", "vector-effect": "non-scaling-stroke" }));
    if (now > t0 && now < t1) chart.append(svg("line", { class: "now", x1: x(now), x2: x(now), y1: 0, y2: h }));
    return el("figure", { class: "forecast" }, chart,
      el("figcaption", { class: "muted small" }, `Forecast: ${num(lo)}–${num(hi)} g CO₂/kWh, ${values.length} points, until `, when(new Date(t1).toISOString())));
  }

  function latest(g) {
    const entries = Object.entries(g.latest || {}).filter(([m]) => m !== FORECAST);
    const cached = seriesCache.get(g.name);
    const chart = cached ? sparkline(cached.points) : null;
    if (!entries.length && !chart) return null;
    return el("section", { class: "sub" }, el("h3", null, "Latest values"),
      el("ul", { class: "latest" }, entries.map(([m, p]) => latestItem(m, p))), chart);
  }

  function wantsForecast(g) {
    const latest = g.latest || {};
    return FORECAST in latest || "carbon_intensity" in latest;
  }

  async function refreshSeries(g) {
    const cached = seriesCache.get(g.name);
    if (!wantsForecast(g) || (cached && Date.now() - cached.at < SERIES_REFRESH_MS)) return;
    const url = `/api/guests/${encodeURIComponent(g.name)}/series?measurement=${FORECAST}&limit=300`;
    try {
      const resp = await fetch(url, { cache: "no-store" });
      const body = resp.ok ? await resp.json() : { points: [] };
      seriesCache.set(g.name, { at: Date.now(), points: body.points || [] });
    } catch (_) {
      // The chart is optional: keep what we had.
    }
  }

  function card(g, openDetails) {
    const id = `guest-${g.name}`;
    return el("article", { class: `card guest state-${g.state}`, "aria-labelledby": id },
      el("header", { class: "guest-head" }, el("h2", { id }, g.name), badge(g.state)),
      g.detail ? detailBlock(g.detail, g.name, openDetails.has(g.name)) : null,
      todo(g), facts(g), counters(g), latest(g));
  }

  // ---- store, summary, refresh -------------------------------------------

  function storeFacts(s) {
    const out = [];
    out.push(fact("Backend", s.backend ? String(s.backend) : "unknown"));
    if (s.backend === "embedded" && s.outbox_depth === undefined) out.push(fact("Outbox", "not used: the embedded store writes on this board"));
    if (s.reachable !== undefined) {
      out.push(fact("Reachable", el("span", { class: `badge state-${s.reachable ? "ok" : "failed"}` },
        icon(s.reachable ? "check" : "cross"), el("span", { class: "words" }, s.reachable ? "yes" : "no"))));
    }
    if (s.outbox_depth !== undefined) {
      const bytes = s.outbox_bytes !== undefined ? ` (${num(s.outbox_bytes)} bytes)` : "";
      out.push(fact("Outbox depth", `${num(s.outbox_depth)} points${bytes}`));
    }
    if (s.outbox_oldest_age_seconds !== undefined && s.outbox_oldest_age_seconds !== null) {
      out.push(fact("Oldest waiting", `${num(s.outbox_oldest_age_seconds)} s`));
    }
    if (s.last_error) out.push(fact("Last error", String(s.last_error)));
    return out;
  }

  function summary(guests) {
    const counts = new Map();
    for (const g of guests) {
      const words = (STATES[g.state] || { words: g.state }).words;
      counts.set(words, (counts.get(words) || 0) + 1);
    }
    const parts = [...counts].map(([w, n]) => `${n} ${w}`);
    return `${guests.length} guest${guests.length === 1 ? "" : "s"}: ${parts.join(", ") || "none configured"}`;
  }

  function render(guests, store) {
    const list = document.getElementById("guests");
    const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.getAttribute("data-guest")));
    list.replaceChildren(...guests.map((g) => card(g, open)));
    document.getElementById("summary").textContent = summary(guests);
    document.getElementById("store-facts").replaceChildren(...storeFacts(store || {}).flat());
  }

  async function getJson(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${url} answered ${resp.status}`);
    return resp.json();
  }

  async function refresh() {
    const problem = document.getElementById("problem");
    try {
      const [guests, store] = await Promise.all([getJson("/guests"), getJson("/api/store").catch(() => ({}))]);
      await Promise.all(guests.map(refreshSeries));
      render(guests, store);
      lastGood = new Date();
      problem.hidden = true;
      document.getElementById("updated").textContent = `Last update ${lastGood.toLocaleTimeString()}.`;
    } catch (err) {
      const since = lastGood ? ` Showing data from ${lastGood.toLocaleTimeString()}.` : "";
      problem.textContent = `Cannot reach the wattedge host (${err.message}).${since} Retrying every ${REFRESH_MS / 1000} s.`;
      problem.hidden = false;
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
