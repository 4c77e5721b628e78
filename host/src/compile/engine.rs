//! The wasmtime [`Engine`] and its limits, in one place.
//!
//! Low-RAM boards fail on wasmtime's default virtual-memory reservations
//! (4 GiB + guards per memory on 64-bit hosts), so the engine reserves only
//! what the largest configured guest may use, with a small guard, and never
//! uses the pooling allocator. Guest CPU is bounded with epoch interruption:
//! a ticker thread advances the epoch only while some guest is running, so an
//! idle host has no timer waking it up.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine};

/// How often the epoch advances while guests run; the granularity of run timeouts.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Memory settings of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Virtual address space reserved per linear memory.
    pub memory_reservation: u64,
    /// Guard region after each linear memory.
    pub memory_guard: u64,
    /// Wasm stack per guest call.
    pub max_wasm_stack: usize,
    /// Address space reserved beyond a memory that outgrew
    /// `memory_reservation` and had to move (see [`EngineLimits::growing_to`]).
    /// A runtime setting: artifacts do not depend on it.
    pub memory_growth: u64,
}

impl EngineLimits {
    /// The settings of a host with no `board` in its config: 64 MiB of
    /// address space per memory on 64-bit machines, 16 MiB on 32-bit ones,
    /// with 64 KiB guards. The shipped board profiles use the same values
    /// for their pointer width. A memory that grows past its reservation is
    /// moved, so the per-guest `memory_limit` (enforced by the store
    /// limiter) may exceed it.
    pub fn native() -> EngineLimits {
        let reservation = if usize::BITS >= 64 { 64 << 20 } else { 16 << 20 };
        EngineLimits {
            memory_reservation: reservation,
            memory_guard: 64 << 10,
            max_wasm_stack: 512 << 10,
            memory_growth: 0,
        }
    }

    /// These limits for guests whose largest `memory_limit` is `largest`.
    /// A memory that grows past its reservation is moved, and wasmtime
    /// reserves only `memory_growth` beyond its new size: with none, every
    /// further `memory.grow` moves and copies the whole memory again (a
    /// guest growing 1 MiB at a time to 512 MiB took 67 s, in memcpy). With
    /// the difference to the largest limit reserved, it moves at most once.
    /// Guests within the reservation (the shipped config's) reserve nothing more.
    pub fn growing_to(self, largest: u64) -> EngineLimits {
        EngineLimits { memory_growth: largest.saturating_sub(self.memory_reservation), ..self }
    }

    /// These limits as `compile-worker` arguments, which the
    /// worker reads back with [`EngineLimits::from_worker_args`].
    pub fn worker_args(&self) -> [String; 4] {
        [
            "--memory-reservation".into(),
            self.memory_reservation.to_string(),
            "--memory-guard".into(),
            self.memory_guard.to_string(),
        ]
    }

    /// The limits a worker was started with.
    pub fn from_worker_args(memory_reservation: u64, memory_guard: u64) -> EngineLimits {
        EngineLimits { memory_reservation, memory_guard, ..EngineLimits::native() }
    }
}

/// What an engine is for: with its [`EngineLimits`], the one parameter of
/// [`build`]. Every engine starts from the same settings (`config`), which
/// is what lets an artifact compiled by one load into another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// Compiles and runs on this machine (`check`, tests, the harness).
    Native,
    /// The engine every guest of the running host shares: it loads compiled
    /// code only. Compiling happens in worker processes, or with a throwaway
    /// [`compiler_like`] engine, so this long-lived one never builds
    /// Cranelift's backend (its code and tables stay out of the host's memory).
    Runtime,
    /// Compiles in this mode for an engine built with the same limits (the
    /// `compile-worker` process's engine).
    Compiler(CompileMode),
    /// Compiles for another target (`aarch64-unknown-linux-gnu`, `pulley32`,
    /// ...) with that target's settings, for `wattedge compile`. Cranelift
    /// then uses the target's baseline CPU features (no LSE atomics on
    /// aarch64), so the artifact also runs on a Pi 3.
    Target(&'a str),
}

/// Builds an engine with `limits` for `purpose`.
pub fn build(limits: EngineLimits, purpose: Purpose<'_>) -> wasmtime::Result<Engine> {
    let mut config = config(limits);
    match purpose {
        Purpose::Native => {}
        #[cfg(not(target_arch = "arm"))]
        Purpose::Runtime => {
            config.enable_compiler(false);
        }
        #[cfg(not(target_arch = "arm"))]
        Purpose::Compiler(mode) => mode.apply(&mut config),
        // 32-bit ARM builds have no compiler to turn off or tune.
        #[cfg(target_arch = "arm")]
        Purpose::Runtime | Purpose::Compiler(_) => {}
        Purpose::Target(target) => {
            config.target(target)?;
            #[cfg(not(target_arch = "arm"))]
            CompileMode::Optimized.apply(&mut config);
        }
    }
    Engine::new(&config)
}

/// How much work Cranelift puts into a guest's code when the host compiles
/// it from `.wasm` (`[guests.NAME] compile`). Both kinds of artifact load
/// into the same engine; only the code inside differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CompileMode {
    /// Cranelift's backtracking register allocator: the faster and smaller
    /// code, which every run and the idle host's memory benefit from.
    /// `wattedge compile` always compiles this way.
    #[default]
    Optimized,
    /// The single-pass register allocator: a first compile takes about
    /// 40 % less CPU, but the code is half as large again (more resident
    /// memory) and slower (README "Compiling guests"). For a first start
    /// or a swap that must be quick, at a cost every later run pays.
    Quick,
}

impl CompileMode {
    /// The word the config and the `compile-worker` command use.
    pub fn as_str(self) -> &'static str {
        match self {
            CompileMode::Quick => "quick",
            CompileMode::Optimized => "optimized",
        }
    }

    /// Sets the register allocator this mode stands for.
    #[cfg(not(target_arch = "arm"))]
    fn apply(self, config: &mut Config) {
        config.cranelift_regalloc_algorithm(match self {
            CompileMode::Quick => wasmtime::RegallocAlgorithm::SinglePass,
            CompileMode::Optimized => wasmtime::RegallocAlgorithm::Backtracking,
        });
    }
}

impl std::str::FromStr for CompileMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quick" => Ok(CompileMode::Quick),
            "optimized" => Ok(CompileMode::Optimized),
            other => Err(format!("{other:?} is not a compile mode; use \"quick\" or \"optimized\"")),
        }
    }
}

/// A short-lived engine with `engine`'s settings, for compiling only.
/// Cranelift keeps its compilation contexts (megabytes, once it has compiled
/// a large guest) for as long as its engine lives. Compiling with a
/// throwaway engine hands that memory back when it is dropped, so the
/// long-lived engine that runs the guests never holds a compiler's working
/// set. Its artifacts load into `engine`, whose config it copies; `mode`
/// changes only how hard Cranelift works.
#[cfg(not(target_arch = "arm"))]
pub fn compiler_like(engine: &Engine, mode: CompileMode) -> wasmtime::Result<Engine> {
    let mut config = engine.config().clone();
    config.enable_compiler(true).cranelift_opt_level(GUEST_OPT_LEVEL);
    mode.apply(&mut config);
    Engine::new(&config)
}

fn config(limits: EngineLimits) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_reservation(limits.memory_reservation)
        .memory_guard_size(limits.memory_guard)
        .memory_reservation_for_growth(limits.memory_growth)
        .max_wasm_stack(limits.max_wasm_stack)
        .async_stack_size(limits.max_wasm_stack + (256 << 10))
        // No `.eh_frame` for guest code: wasmtime walks guest frames by frame
        // pointer, and a host panic never unwinds through them (wasmtime
        // catches it at the host call). The table only served native
        // unwinders, and was 4 % of each artifact, 5-10 % of its compile,
        // and a registration walk over every function at each load.
        .native_unwind_info(false);
    #[cfg(not(target_arch = "arm"))]
    config.cranelift_opt_level(GUEST_OPT_LEVEL);
    config
}

/// Cranelift's optimisation level for guests. `None` skips the e-graph
/// mid-end: compiling the three shipped guests takes a quarter less CPU
/// (0.61 against 0.81 s on the build machine), which is most of a first
/// start, and on a Pi the whole of it. Guests are already optimised by LLVM
/// and spend their runs waiting on HTTP and the store, so the slower code
/// costs them little (README "Benchmarks", "Compiling guests").
#[cfg(not(target_arch = "arm"))]
const GUEST_OPT_LEVEL: wasmtime::OptLevel = wasmtime::OptLevel::None;

/// Advances the engine's epoch every [`EPOCH_TICK`] while at least one guest
/// call is in flight, and sleeps on a condition variable otherwise. The
/// thread ends when the last clone of the ticker is dropped.
///
/// It is an OS thread, not a tokio task: a guest spinning on a worker thread
/// must not be able to starve the very timer that interrupts it.
#[derive(Clone)]
pub struct EpochTicker {
    ticking: Arc<Ticking>,
    _stop: Arc<StopOnDrop>,
}

/// Guest calls in flight, and whether the ticker is gone.
#[derive(Default)]
struct Ticking {
    running: Mutex<usize>,
    wake: Condvar,
    stopped: std::sync::atomic::AtomicBool,
}

/// Wakes the thread to end when the last [`EpochTicker`] is dropped.
struct StopOnDrop(Arc<Ticking>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        self.0.stopped.store(true, std::sync::atomic::Ordering::Release);
        self.0.wake.notify_all();
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: Engine) -> EpochTicker {
        let ticking = Arc::new(Ticking::default());
        let weak = Arc::downgrade(&ticking);
        std::thread::Builder::new()
            .name("wattedge-epoch".into())
            .spawn(move || {
                while let Some(ticking) = weak.upgrade() {
                    if !ticking.wait_for_a_call() {
                        return;
                    }
                    drop(ticking);
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { _stop: Arc::new(StopOnDrop(ticking.clone())), ticking }
    }

    /// Marks a guest call as running until the guard is dropped.
    pub fn running(&self) -> RunningGuard {
        *self.ticking.running.lock().expect("epoch lock") += 1;
        self.ticking.wake.notify_one();
        RunningGuard { ticking: self.ticking.clone() }
    }
}

impl Ticking {
    /// Blocks until a guest call runs (true) or the ticker is dropped (false).
    fn wait_for_a_call(&self) -> bool {
        let stopped = || self.stopped.load(std::sync::atomic::Ordering::Acquire);
        let running = self.running.lock().expect("epoch lock");
        let running = self.wake.wait_while(running, |n| *n == 0 && !stopped()).expect("epoch lock");
        *running > 0 && !stopped()
    }
}

/// Keeps the epoch ticking while alive.
pub struct RunningGuard {
    ticking: Arc<Ticking>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *self.ticking.running.lock().expect("epoch lock") -= 1;
    }
}

/// Makes a store yield to the scheduler at every epoch tick and trap once
/// the wall-clock deadline in its data has passed: a guest in a tight loop
/// neither monopolises a worker thread nor outlives its `run_timeout`.
pub fn install_deadline<T: Send + 'static>(store: &mut wasmtime::Store<T>, deadline: fn(&T) -> Option<Instant>) {
    store.epoch_deadline_callback(move |ctx| {
        Ok(match deadline(ctx.data()) {
            Some(at) if Instant::now() >= at => wasmtime::UpdateDeadline::Interrupt,
            _ => wasmtime::UpdateDeadline::Yield(1),
        })
    });
    store.set_epoch_deadline(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_may_grow_to_the_largest_limit_after_one_move() {
        let native = EngineLimits::native();
        let big = native.growing_to(512 << 20);
        assert_eq!(big.memory_reservation + big.memory_growth, 512 << 20);
        assert_eq!(native.growing_to(16 << 20).memory_growth, 0, "within the reservation: nothing more");
    }

    #[test]
    #[cfg(not(target_arch = "arm"))]
    fn a_runtime_engine_cannot_compile_but_loads_what_a_compiler_with_its_limits_compiled() {
        let limits = EngineLimits::native();
        let runtime = build(limits, Purpose::Runtime).unwrap();
        let empty = b"\0asm\x0d\0\x01\0"; // an empty component
        assert!(runtime.precompile_component(empty).is_err(), "the runtime engine has no compiler");
        for mode in [CompileMode::Quick, CompileMode::Optimized] {
            let compiler = build(limits, Purpose::Compiler(mode)).unwrap();
            let artifact = compiler.precompile_component(empty).unwrap();
            // SAFETY: compiled just now by an engine with the runtime's settings.
            let loaded = unsafe { wasmtime::component::Component::deserialize(&runtime, &artifact) };
            assert!(loaded.is_ok(), "{mode:?}: {:?}", loaded.err());
        }
        let pulley = build(limits, Purpose::Target("pulley32")).unwrap();
        let foreign = pulley.precompile_component(empty).unwrap();
        // SAFETY: wasmtime checks the target recorded in the artifact first.
        assert!(unsafe { wasmtime::component::Component::deserialize(&runtime, &foreign) }.is_err());
    }

    #[test]
    fn the_ticker_thread_ends_with_the_last_ticker() {
        let ticker = EpochTicker::start(build(EngineLimits::native(), Purpose::Native).unwrap());
        let ticking = Arc::downgrade(&ticker.ticking);
        let clone = ticker.clone();
        drop(clone.running());
        drop(ticker);
        assert!(ticking.upgrade().is_some(), "a clone keeps it running");
        drop(clone);
        let gave_up = Instant::now() + Duration::from_secs(2);
        while ticking.upgrade().is_some() {
            assert!(Instant::now() < gave_up, "the thread still holds the ticker");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
