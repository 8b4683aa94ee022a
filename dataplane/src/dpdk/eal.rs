//! EAL initialisation (once per process) and the lcores and clock it provides.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{CpuSet, DpdkError};

/// `rte_eal_init` succeeds once per process; `rte_eal_cleanup` does not reset that.
static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// Proof that the EAL is initialised. Everything that needs the EAL takes `&Eal`.
#[derive(Debug)]
pub struct Eal {
    tsc_hz: u64,
    /// The CPUs the process could use before the EAL pinned the main thread to its lcore.
    startup_cpus: Option<CpuSet>,
}

impl Eal {
    /// Initialises the EAL from an argument list (without the program name). Fails with a
    /// clear error when called a second time in the same process.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, DpdkError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::new(
                "EAL initialisation",
                "the EAL was already initialised in this process (DPDK allows it only once)",
            ));
        }
        // rte_eal_init pins the calling thread to the main lcore's CPU: remember what it
        // had, for the threads that must stay off the lcores' CPUs (Eal::control_cpus).
        let startup_cpus = CpuSet::of_current_thread().ok();
        let mut owned = vec![CString::new("qosgw").expect("no NUL in a literal")];
        for a in args {
            let a = a.as_ref();
            owned.push(CString::new(a).map_err(|_| {
                DpdkError::new(
                    "EAL arguments",
                    format!("argument {a:?} contains a NUL byte"),
                )
            })?);
        }
        // rte_eal_init may permute argv, so it gets its own array of pointers.
        let mut argv: Vec<*mut std::ffi::c_char> =
            owned.iter().map(|s| s.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call (owned
        // lives until the end of this function; the EAL copies what it keeps), and a final
        // NULL. This is the first and only call in the process (EAL_STARTED above).
        let ret = unsafe { dpdk_sys::rte_eal_init(owned.len() as c_int, argv.as_mut_ptr()) };
        if ret < 0 {
            let errnum = super::rte_errno();
            let mut e = DpdkError::from_errno("EAL initialisation");
            e.detail += init_hint(errnum);
            return Err(e);
        }
        // SAFETY: the EAL is initialised.
        let tsc_hz = unsafe { dpdk_sys::rte_get_tsc_hz() };
        Ok(Eal {
            tsc_hz,
            startup_cpus,
        })
    }

    /// TSC cycles per second, as measured by the EAL.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// The worker lcores the EAL was given (`-l`/`--lcores`), main lcore excluded.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut out = Vec::new();
        // SAFETY: the EAL is initialised; rte_get_next_lcore only reads its lcore table.
        let mut id = unsafe { dpdk_sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while id < dpdk_sys::RTE_MAX_LCORE {
            out.push(id);
            // SAFETY: as above.
            id = unsafe { dpdk_sys::rte_get_next_lcore(id, 1, 0) };
        }
        out
    }

    /// The CPUs of every lcore, the main one included: where the workers busy-poll. None
    /// if one lies beyond the 1024 a [`CpuSet`] holds.
    pub fn lcore_cpus(&self) -> Option<CpuSet> {
        let mut words = [0u64; CpuSet::words()];
        // SAFETY: the EAL is initialised; the mask is `words` 64-bit words long, as the
        // call says; qosgw_lcore_cpus only reads the EAL's lcore table.
        let ret = unsafe { dpdk_sys::qosgw_lcore_cpus(words.as_mut_ptr(), words.len() as u32) };
        (ret == 0).then(|| CpuSet::from_words(words))
    }

    /// The CPUs for threads other than the workers (control, HTTP): those the process
    /// could use at start-up less the lcores' CPUs, as DPDK does for its own control
    /// threads. None when the lcores take every CPU (such threads then stay where they
    /// are). A thread woken on a worker's CPU preempts the worker, and the packets it
    /// holds wait for as long.
    pub fn control_cpus(&self) -> Option<CpuSet> {
        let rest = self.startup_cpus?.without(&self.lcore_cpus()?);
        (!rest.is_empty()).then_some(rest)
    }

    /// Whether `lcore` is a worker lcore and the caller the main lcore: DPDK launches and
    /// waits only from there, and indexes its lcore table without a check.
    fn may_launch_on(&self, lcore: u32) -> bool {
        // SAFETY: the EAL is initialised; both only read its lcore configuration.
        let on_main = unsafe { dpdk_sys::qosgw_lcore_id() == dpdk_sys::rte_get_main_lcore() };
        on_main && self.worker_lcores().contains(&lcore)
    }

    /// Runs `f` on worker lcore `lcore`, from the main lcore. Join it with [`Eal::wait`].
    pub fn launch<F: FnOnce() + Send + 'static>(&self, lcore: u32, f: F) -> Result<(), DpdkError> {
        if !self.may_launch_on(lcore) {
            return Err(DpdkError::new(
                format!("launching lcore {lcore}"),
                "not a worker lcore, or not called from the main lcore",
            ));
        }
        extern "C" fn trampoline(arg: *mut c_void) -> c_int {
            // SAFETY: arg is the Box<Box<dyn FnOnce>> leaked by launch below, handed to
            // exactly one lcore, so we take ownership of it exactly once.
            let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
            f();
            0
        }
        let boxed: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed).cast::<c_void>();
        // SAFETY: trampoline has the lcore_function_t signature; arg stays valid until
        // trampoline takes it back.
        let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret != 0 {
            // SAFETY: the launch failed, so trampoline never ran and we still own arg.
            drop(unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) });
            return Err(DpdkError::from_code(
                format!("launching lcore {lcore}"),
                ret,
            ));
        }
        Ok(())
    }

    /// Waits until the function launched on worker lcore `lcore` has returned (at once for
    /// an lcore that is not a worker's).
    pub fn wait(&self, lcore: u32) {
        if !self.worker_lcores().contains(&lcore) {
            return;
        }
        // SAFETY: the EAL is initialised and lcore is a worker lcore (in its table); waiting
        // on an idle lcore returns at once.
        unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) };
    }
}

/// What an operator can do about `rte_eal_init` failing with `errnum`.
fn init_hint(errnum: i32) -> &'static str {
    const EACCES: i32 = 13;
    const EINVAL: i32 = 22;
    const ENOMEM: i32 = 12;
    match errnum {
        EINVAL => " (an EAL argument was refused: DPDK names it above)",
        EACCES => {
            " (no usable hugepages: reserve some, or give the EAL --no-huge and -m with the MB \
             it may use)"
        }
        ENOMEM => " (not enough memory: give the EAL more with -m, or reserve more hugepages)",
        _ => "",
    }
}

/// `--lcores` giving `workers` lcores, one per worker, spread round robin over the CPUs
/// this process may use (more workers than CPUs share them).
pub fn lcores_arg(workers: usize) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lcores: Vec<String> = (0..workers).map(|l| format!("{l}@{}", l % cpus)).collect();
    format!("--lcores={}", lcores.join(","))
}

/// The EAL arguments of a gateway on virtual devices only (replay, bench): no hugepages,
/// no PCI scan, no shared config or telemetry socket, `memory_mb` of memory, errors only
/// in the log, and one lcore per worker.
pub fn virtual_device_args(memory_mb: usize, workers: usize) -> Vec<String> {
    let mut args: Vec<String> = ["--no-huge", "-m"].map(String::from).to_vec();
    args.push(memory_mb.to_string());
    args.extend(
        [
            "--no-shconf",
            "--no-pci",
            "--no-telemetry",
            "--log-level=error",
        ]
        .map(String::from),
    );
    args.push(lcores_arg(workers));
    args
}

/// The current TSC value. Cheap (an rdtsc), callable from any thread.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { dpdk_sys::qosgw_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_initialisation_is_a_clear_error() {
        // As if the EAL had started: no test in this binary starts it for real (tests that
        // need DPDK run the qosgw binary as its own process).
        EAL_STARTED.store(true, Ordering::SeqCst);
        let err = Eal::init(&["--no-huge"]).unwrap_err();
        assert_eq!(err.context, "EAL initialisation");
        assert!(err.to_string().contains("already initialised"), "{err}");
    }
}
