//! systemd's service notifications (sd_notify(3)) for `qosgw run` under a `Type=notify`
//! unit with a watchdog (config/qosgw.service): `READY=1` once forwarding, `WATCHDOG=1`
//! while every worker is polling, `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` in
//! the environment (not started by systemd) nothing is sent.
//!
//! The watchdog is why this exists: a worker that stops polling (a driver that hangs, a
//! bug) stops the pings, and systemd restarts the gateway instead of leaving the link dark
//! behind a process that still answers.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::Duration;

/// Where and how often to tell systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    /// `WATCHDOG_USEC`, when systemd expects pings (and they are for this process).
    watchdog: Option<Duration>,
    /// Set once `STOPPING=1` is sent: nothing follows it (a ping from another thread
    /// would say the service is still running).
    stopping: Mutex<bool>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` describe, if any.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog = std::env::var("WATCHDOG_USEC").ok();
        Notifier::new(
            path.to_str()?,
            watchdog.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// A notifier for the socket `path` (`@name` for an abstract one) with the watchdog
    /// settings as systemd sets them, for the process `me`.
    fn new(path: &str, usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Notifier> {
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).ok()?
            }
            None => SocketAddr::from_pathname(path).ok()?,
        };
        // WATCHDOG_PID names the process the pings are for: not ours, none to send.
        let ours = pid.is_none_or(|p| p.parse() == Ok(me));
        let watchdog = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        // Never blocking: a manager slow to read (its queue full) costs a notification,
        // not the control thread.
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Notifier {
            socket,
            to,
            watchdog,
            stopping: Mutex::new(false),
        })
    }

    /// Sends `state` (`KEY=VALUE` lines). A lost notification is not worth stopping for:
    /// systemd then acts on its own timeouts.
    pub fn send(&self, state: &str) {
        let stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        if !*stopping {
            let _ = self.socket.send_to_addr(state.as_bytes(), &self.to);
        }
    }

    /// Sends `STOPPING=1`, the last notification.
    pub fn stopping(&self) {
        let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        if !*stopping {
            let _ = self.socket.send_to_addr(b"STOPPING=1", &self.to);
            *stopping = true;
        }
    }

    /// Whether systemd expects `WATCHDOG=1` pings.
    pub fn wants_pings(&self) -> bool {
        self.watchdog.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_only_when_systemd_says_so() {
        let n = |usec, pid| Notifier::new("/run/x.sock", usec, pid, 42).unwrap();
        assert!(n(Some("5000000"), None).wants_pings());
        assert!(n(Some("5000000"), Some("42")).wants_pings());
        assert!(
            !n(Some("5000000"), Some("43")).wants_pings(),
            "another process's"
        );
        assert!(!n(Some("0"), None).wants_pings());
        assert!(!n(None, None).wants_pings());
        assert!(!n(Some("soon"), None).wants_pings());
    }

    #[test]
    fn notifications_reach_the_socket_path_and_abstract_names() {
        let dir = std::env::temp_dir().join(format!("qosgw-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        let n = Notifier::new(dir.to_str().unwrap(), None, None, 1).unwrap();
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        // Nothing after STOPPING=1.
        n.stopping();
        n.send("WATCHDOG=1");
        listener.set_nonblocking(true).unwrap();
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert!(listener.recv(&mut buf).is_err(), "nothing after it");
        std::fs::remove_file(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("qosgw-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"), None, None, 1)
            .unwrap()
            .send("WATCHDOG=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn a_manager_that_does_not_read_costs_notifications_not_the_sender() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("qosgw-notify-full-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        let _never_read = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}"), None, None, 1).unwrap();
        // Far beyond the kernel's queue of datagrams (net.unix.max_dgram_qlen, 10 here),
        // where a blocking socket would wait for ever.
        let t0 = std::time::Instant::now();
        for _ in 0..1000 {
            n.send("WATCHDOG=1");
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
