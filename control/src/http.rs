//! A small HTTP/1.1 server on the standard library for the gateway's control
//! endpoint (SPEC §5): `GET /metrics`, `GET /healthz`, `GET /policies` and
//! `POST /-/reload`.
//!
//! It serves one request per connection (`Connection: close`), each
//! connection on a thread of its own, at most [`MAX_CONNECTIONS`] at once
//! (more wait in the listen queue), so a client that sends nothing delays
//! nobody else. Every connection is bounded: the request head may be
//! at most [`MAX_HEAD`] bytes and must arrive within [`REQUEST_TIMEOUT`] in
//! total (a client that sends nothing, or one byte at a time, holds its
//! thread no longer than that); a request body (ignored) may be at most
//! [`MAX_BODY`] bytes and must arrive within the same deadline; the
//! answer must be read within [`WRITE_TIME`]; after it, what the client
//! still sends is drained for at most [`DRAIN_TIME`]. At most
//! [`MAX_HANDLERS`] answers of `/metrics` and `/policies` are rendered at once;
//! `/healthz` and reloads do not wait for them.
//!
//! `HEAD` is answered like `GET` without the body. A `405` carries an
//! `Allow` header. Answers the server gives by itself: `400` for a request
//! it cannot parse, `408` when the head does not arrive in time, `413` for a
//! body over [`MAX_BODY`], `431` for a head over [`MAX_HEAD`], `501` for
//! `Transfer-Encoding` (not needed by any client of these endpoints).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 64 * 1024;
/// The largest request body accepted (and discarded).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long, after the answer, what the client still sends is read (so that the kernel
/// does not reset the connection before the client has read the answer).
pub const DRAIN_TIME: Duration = Duration::from_millis(200);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to read its whole answer.
pub const WRITE_TIME: Duration = Duration::from_secs(10);
/// How often `serve` looks at its stop flag when no client connects.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The Prometheus text exposition format's content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As sent (`GET`, `POST`, ...); methods are case-sensitive.
    pub method: String,
    /// The path without the query string (`/metrics` for `/metrics?x=1`).
    pub path: String,
    /// The client's address.
    pub peer: SocketAddr,
}

/// A response; `serve` adds `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body: body.into(),
        }
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: JSON_CONTENT_TYPE,
            body: body.into(),
        }
    }

    /// A `200` response in the Prometheus text format (for `/metrics`).
    pub fn prometheus(body: impl Into<String>) -> Response {
        Response {
            status: 200,
            content_type: PROMETHEUS_CONTENT_TYPE,
            body: body.into(),
        }
    }
}

/// Binds a listener for [`serve`] (with `SO_REUSEADDR`, as the standard
/// library does on Unix, so a restarted gateway can bind at once).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves until `stop` is raised (checked at least every 50 ms), one request per
/// connection, each connection on a thread of its own (at most [`MAX_CONNECTIONS`]).
/// Connections still open when it returns end on their own within their deadlines.
/// `handler` gets every request the server could parse; it is typically `|req| match
/// route(req) { Ok(r) => ..., Err(resp) => resp }`.
///
/// The connection threads are kept, not started per connection: starting and ending a
/// thread maps and unmaps its stacks, which waits for the process's memory-map lock, and
/// under heavy load an audit saw that wait stall the whole endpoint (the accept loop
/// starting a thread, and the threads started before it) for seconds while the gateway
/// forwarded on. So a thread is started only when every kept one is busy.
pub fn serve(
    listener: TcpListener,
    stop: &AtomicBool,
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        // Without a non-blocking listener the stop flag would not be seen.
        let _ = writeln!(
            std::io::stderr(),
            "qosgw: http: cannot make the listener non-blocking: {e}"
        );
        return;
    }
    let mut pool = Pool::new(handler);
    while !stop.load(Ordering::Relaxed) {
        if pool.full() {
            // Further clients wait in the listen queue until a connection ends (each
            // within its deadlines).
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => pool.hand(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock, or a transient error such as running out of file
            // descriptors or a connection aborted before accept: wait.
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A connection handed to the pool.
type Connection = (TcpStream, SocketAddr);

/// The connection threads: started as connections need them, up to [`MAX_CONNECTIONS`],
/// and kept, each taking the next connection when done with one. They end when the pool
/// is dropped (each once done with its connection).
struct Pool<H> {
    to_threads: mpsc::Sender<Connection>,
    from_accept: Arc<Mutex<mpsc::Receiver<Connection>>>,
    handler: Arc<H>,
    /// Connections handed over and not yet done with.
    busy: Arc<AtomicUsize>,
    threads: usize,
}

impl<H: Fn(&Request) -> Response + Send + Sync + 'static> Pool<H> {
    fn new(handler: H) -> Pool<H> {
        let (to_threads, from_accept) = mpsc::channel();
        Pool {
            to_threads,
            from_accept: Arc::new(Mutex::new(from_accept)),
            handler: Arc::new(handler),
            busy: Arc::new(AtomicUsize::new(0)),
            threads: 0,
        }
    }

    /// Whether [`MAX_CONNECTIONS`] are being served.
    fn full(&self) -> bool {
        self.busy.load(Ordering::Relaxed) >= MAX_CONNECTIONS
    }

    /// Hands a connection to a kept thread, starting one if every kept one is busy. With
    /// no thread at all (none could be started), the connection closes.
    fn hand(&mut self, stream: TcpStream, peer: SocketAddr) {
        let all_busy = self.busy.load(Ordering::Relaxed) >= self.threads;
        if all_busy && !self.start_thread() && self.threads == 0 {
            return;
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        // The threads end only when the pool goes, so one is there to take it.
        let _ = self.to_threads.send((stream, peer));
    }

    fn start_thread(&mut self) -> bool {
        let from_accept = self.from_accept.clone();
        let (handler, busy) = (self.handler.clone(), self.busy.clone());
        let started = std::thread::Builder::new()
            .name("qosgw-http-conn".into())
            .spawn(move || loop {
                let next = from_accept.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((stream, peer)) = next else { return };
                // A handler that panics costs its connection, not the thread.
                let serve_one = std::panic::AssertUnwindSafe(|| handle(stream, peer, &*handler));
                let _ = std::panic::catch_unwind(serve_one);
                busy.fetch_sub(1, Ordering::Relaxed);
            });
        self.threads += usize::from(started.is_ok());
        started.is_ok()
    }
}

/// What reading a request produced.
enum Incoming {
    Request {
        method: String,
        target: String,
    },
    /// Answer this and close.
    Error(Response),
    /// Close without answering (the client sent nothing or went away).
    Close,
}

fn handle(mut stream: TcpStream, peer: SocketAddr, handler: &dyn Fn(&Request) -> Response) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    // Accepted sockets may inherit the listener's non-blocking mode on some
    // systems; timeouts need a blocking socket.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_request(&mut stream, deadline) {
        Incoming::Close => return,
        Incoming::Error(r) => (r, false),
        Incoming::Request { method, target } => {
            let req = Request {
                path: request_path(&target),
                method,
                peer,
            };
            let resp = {
                // Only renderings wait for a turn: `/healthz` answers whatever is being
                // rendered, and reloads run one at a time by themselves.
                let renders = matches!(route(&req), Ok(Route::Metrics | Route::Policies));
                let _turn = renders.then(|| HANDLERS.enter());
                handler(&req)
            };
            let allow = if resp.status == 405 {
                allowed_methods(&req.path)
            } else {
                None
            };
            return finish(stream, &resp, allow, req.method == "HEAD");
        }
    };
    finish(stream, &response, None, head_only);
}

/// Writes the response and closes the connection.
fn finish(mut stream: TcpStream, resp: &Response, allow: Option<&str>, head_only: bool) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if let Some(allow) = allow {
        out.push_str("Allow: ");
        out.push_str(allow);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&resp.body);
    }
    if write_by(&mut stream, out.as_bytes(), Instant::now() + WRITE_TIME).is_err() {
        return;
    }
    // Close gracefully: send FIN, then drain briefly whatever the client
    // still sends so the kernel does not answer it with a reset that could
    // destroy the response before the client reads it.
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + DRAIN_TIME;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_BODY {
        match read_some(&mut stream, &mut buf, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads the request head (and discards a body of `Content-Length` bytes)
/// before `deadline`.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Incoming {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_end, body_start) = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Incoming::Error(Response::text(
                431,
                format!("request head larger than {MAX_HEAD} bytes\n"),
            ));
        }
        match read_some(stream, &mut chunk, deadline) {
            Ok(0) => return Incoming::Close,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) && !buf.is_empty() => {
                return Incoming::Error(Response::text(408, "the request did not arrive in time\n"))
            }
            Err(_) => return Incoming::Close,
        }
    };
    if head_end > MAX_HEAD {
        return Incoming::Error(Response::text(
            431,
            format!("request head larger than {MAX_HEAD} bytes\n"),
        ));
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Incoming::Error(Response::text(400, "the request head is not UTF-8\n"));
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    // RFC 9112 §2.2: ignore empty lines before the request line.
    let request_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Incoming::Error(Response::text(400, "malformed request line\n"));
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
        || target.is_empty()
        || !(version == "HTTP/1.1" || version == "HTTP/1.0")
    {
        return Incoming::Error(Response::text(400, "malformed request line\n"));
    }
    let mut content_length: usize = 0;
    let mut seen_length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            if line.is_empty() {
                continue;
            }
            return Incoming::Error(Response::text(400, "malformed header line\n"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                // RFC 9112 §6.3: differing lengths make the message invalid.
                Ok(n) if seen_length.is_some_and(|m| m != n) => {
                    return Incoming::Error(Response::text(400, "conflicting Content-Length\n"))
                }
                Ok(n) if n <= MAX_BODY => {
                    content_length = n;
                    seen_length = Some(n);
                }
                Ok(_) => {
                    return Incoming::Error(Response::text(
                        413,
                        format!("request body larger than {MAX_BODY} bytes\n"),
                    ))
                }
                Err(_) => return Incoming::Error(Response::text(400, "bad Content-Length\n")),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Incoming::Error(Response::text(
                501,
                "Transfer-Encoding is not supported; send a Content-Length\n",
            ));
        }
    }
    // Discard the body, which no endpoint uses.
    let mut have = buf.len() - body_start;
    while have < content_length {
        match read_some(stream, &mut chunk, deadline) {
            Ok(0) => return Incoming::Close,
            Ok(n) => have += n,
            Err(e) if is_timeout(&e) => {
                return Incoming::Error(Response::text(
                    408,
                    "the request body did not arrive in time\n",
                ))
            }
            Err(_) => return Incoming::Close,
        }
    }
    Incoming::Request {
        method: method.to_string(),
        target: target.to_string(),
    }
}

/// The time until `deadline`, or `TimedOut` once it has passed (a zero socket timeout
/// would mean none).
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// One read, bounded by `deadline`.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    loop {
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Writes all of `bytes` before `deadline` (a socket's write timeout bounds each write
/// call, not the whole: a client that reads a few bytes at a time would hold its
/// connection for ever).
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// At most this many renderings of `/metrics` or `/policies` run at once, whatever the
/// connections: for many policies they take a while, and the control CPUs may be few.
pub const MAX_HANDLERS: usize = 4;
static HANDLERS: Turns = Turns::new(MAX_HANDLERS);

/// A counting semaphore.
struct Turns {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Turns {
    const fn new(n: usize) -> Turns {
        Turns {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a turn; it ends when the guard is dropped.
    fn enter(&self) -> Turn<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Turn(self)
    }
}

struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Where the head ends (at the empty line, `\r\n\r\n`, or `\n\n` as RFC
/// 9112 §2.2 allows) and where the body starts.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some((line_start.saturating_sub(1), i + 1));
            }
            line_start = i + 1;
        }
    }
    None
}

/// The path of a request target: without query string or fragment, and
/// without scheme and authority for the absolute form
/// (`http://host:9477/metrics` → `/metrics`).
fn request_path(target: &str) -> String {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    t[..end].to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The endpoints of SPEC §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`: Prometheus text ([`Response::prometheus`]).
    Metrics,
    /// `GET /healthz`.
    Healthz,
    /// `GET /policies`: the policies in force, with the generation.
    Policies,
    /// `POST /-/reload`: only from loopback.
    Reload,
}

/// The endpoints, their paths and their method.
const ROUTES: [(&str, &str, Route); 4] = [
    ("/metrics", "GET", Route::Metrics),
    ("/healthz", "GET", Route::Healthz),
    ("/policies", "GET", Route::Policies),
    ("/-/reload", "POST", Route::Reload),
];

/// The `Allow` header value for a known path.
fn allowed_methods(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, m, _)| if *m == "GET" { "GET, HEAD" } else { *m })
}

/// Whether a peer is on loopback (`127.0.0.0/8`, `::1`, or
/// `::ffff:127.x.y.z`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// SPEC §5's rules: `GET /metrics`, `GET /healthz`, `GET /policies` (each
/// also `HEAD`) and `POST /-/reload`. Returns the route to serve, or the
/// response to send instead: `404` for an unknown path, `405` for a known
/// path with the wrong method (`serve` adds the `Allow` header), `403` for a
/// state-changing request (`POST /-/reload`) from a peer that is not on
/// loopback (IPv4-mapped IPv6 loopback counts as loopback).
pub fn route(req: &Request) -> Result<Route, Response> {
    let Some(&(path, method, route)) = ROUTES.iter().find(|(p, _, _)| *p == req.path) else {
        return Err(Response::text(
            404,
            format!(
                "not found: {}; endpoints: GET /metrics, GET /healthz, GET /policies, POST /-/reload\n",
                req.path
            ),
        ));
    };
    let method_ok = req.method == method || (method == "GET" && req.method == "HEAD");
    if !method_ok {
        return Err(Response::text(
            405,
            format!(
                "method {} not allowed on {path}; allowed: {}\n",
                req.method,
                allowed_methods(path).unwrap_or(method)
            ),
        ));
    }
    if method != "GET" && !is_loopback(req.peer.ip()) {
        return Err(Response::text(
            403,
            format!(
                "{method} {path} is refused from {}: state changes are only accepted from loopback (127.0.0.0/8 or ::1)\n",
                req.peer.ip()
            ),
        ));
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `raw` to `addr` and returns the whole answer.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        exchange(
            addr,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
    }

    fn status(answer: &str) -> u16 {
        answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer:?}"))
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// Runs `serve` with a handler built on `route` on a thread, calls `f`
    /// with the address, then stops the server and checks that it ends.
    fn with_server(f: impl FnOnce(SocketAddr, &AtomicUsize)) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        let reloads = Arc::new(AtomicUsize::new(0));
        let counted = reloads.clone();
        std::thread::scope(|s| {
            let server = s.spawn(|| {
                serve(listener, &stop, move |req| match route(req) {
                    Ok(Route::Healthz) => Response::text(200, "ok\n"),
                    Ok(Route::Metrics) => Response::prometheus("qosgw_x 1\n"),
                    Ok(Route::Policies) => Response::json(200, "{\"generation\": 1}"),
                    Ok(Route::Reload) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Response::json(200, "{\"ok\": true}")
                    }
                    Err(resp) => resp,
                })
            });
            // Raised however `f` ends: a failed assertion must not leave the scope
            // waiting for the server forever.
            struct Raise<'a>(&'a AtomicBool);
            impl Drop for Raise<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let raise = Raise(&stop);
            f(addr, &reloads);
            drop(raise);
            let t = Instant::now();
            server.join().unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
        });
    }

    #[test]
    fn serves_the_endpoints() {
        with_server(|addr, reloads| {
            let a = get(addr, "GET", "/healthz");
            assert_eq!(status(&a), 200, "{a}");
            assert_eq!(body(&a), "ok\n");
            assert!(a.contains("\r\nContent-Length: 3\r\n"), "{a}");
            assert!(a.contains("\r\nConnection: close\r\n"), "{a}");
            assert!(
                a.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
                "{a}"
            );

            let a = get(addr, "GET", "/metrics?name[]=x");
            assert_eq!(status(&a), 200, "{a}");
            assert!(a.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
            assert_eq!(body(&a), "qosgw_x 1\n");

            let a = get(addr, "GET", "/policies");
            assert!(a.contains("\r\nContent-Type: application/json\r\n"), "{a}");
            assert_eq!(body(&a), "{\"generation\": 1}");

            let a = get(addr, "HEAD", "/healthz");
            assert_eq!(status(&a), 200, "{a}");
            assert!(a.contains("\r\nContent-Length: 3\r\n"), "{a}");
            assert_eq!(body(&a), "");

            let a = get(addr, "GET", "/nope");
            assert_eq!(status(&a), 404, "{a}");
            assert!(body(&a).contains("GET /metrics"), "{a}");

            let a = get(addr, "POST", "/metrics");
            assert_eq!(status(&a), 405, "{a}");
            assert!(a.contains("\r\nAllow: GET, HEAD\r\n"), "{a}");
            assert!(body(&a).contains("allowed: GET, HEAD"), "{a}");

            let a = get(addr, "GET", "/-/reload");
            assert_eq!(status(&a), 405, "{a}");
            assert!(a.contains("\r\nAllow: POST\r\n"), "{a}");
            assert_eq!(reloads.load(Ordering::SeqCst), 0);

            // POST from loopback, with a body (discarded) as curl -d sends.
            let a = exchange(
                addr,
                b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            );
            assert_eq!(status(&a), 200, "{a}");
            assert_eq!(body(&a), "{\"ok\": true}");
            let a = get(addr, "POST", "http://127.0.0.1/-/reload");
            assert_eq!(status(&a), 200, "{a}");
            assert_eq!(reloads.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn bad_requests() {
        with_server(|addr, _| {
            for raw in [
                &b"GARBAGE\r\n\r\n"[..],
                b"GET /healthz\r\n\r\n",
                b"GET /healthz HTTP/2.0\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n",
                b"POST /-/reload HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                b"POST /-/reload HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            ] {
                let a = exchange(addr, raw);
                assert_eq!(status(&a), 400, "{raw:?}: {a}");
            }
            let a = exchange(
                addr,
                b"POST /-/reload HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
            );
            assert_eq!(status(&a), 413, "{a}");
            let a = exchange(
                addr,
                b"POST /-/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            );
            assert_eq!(status(&a), 501, "{a}");
            // A head over 64 KiB.
            let mut raw = b"GET /healthz HTTP/1.1\r\n".to_vec();
            while raw.len() <= MAX_HEAD + 10 {
                raw.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // The server may close before reading everything.
            let _ = s.write_all(&raw);
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            assert_eq!(status(&out), 431, "{out}");
            // Still serving.
            assert_eq!(status(&get(addr, "GET", "/healthz")), 200);
        });
    }

    #[test]
    fn silent_and_slow_clients_do_not_stall_the_server() {
        with_server(|addr, _| {
            // A client that connects and sends nothing.
            let mut silent = TcpStream::connect(addr).unwrap();
            // One that starts a request and never finishes its head.
            let mut slow = TcpStream::connect(addr).unwrap();
            slow.write_all(b"G").unwrap();
            let t = Instant::now();
            let a = get(addr, "GET", "/healthz");
            assert_eq!(status(&a), 200, "{a}");
            // At most two request timeouts (plus slack) for the two before.
            assert!(
                t.elapsed() < REQUEST_TIMEOUT * 2 + Duration::from_secs(1),
                "{:?}",
                t.elapsed()
            );
            silent
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut out = Vec::new();
            // Closed without an answer.
            assert_eq!(silent.read_to_end(&mut out).unwrap_or(0), 0);
            let mut out = String::new();
            slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = slow.read_to_string(&mut out);
            assert_eq!(status(&out), 408, "{out}");
        });
    }

    /// Clients that send nothing, or keep sending after their answer, hold only their own
    /// connection: others are answered at once; past the limit, a client waits until a
    /// connection ends. (Found by an audit: one connection at a time, ten silent clients
    /// delayed a scrape by 20 s, and one trickling after its answer by over a minute.)
    #[test]
    fn slow_clients_delay_nobody_else() {
        with_server(|addr, _| {
            let silent: Vec<TcpStream> =
                (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let mut trickle = TcpStream::connect(addr).unwrap();
            trickle.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let t = Instant::now();
            for _ in 0..5 {
                assert_eq!(status(&get(addr, "GET", "/healthz")), 200);
                let _ = trickle.write_all(b"x");
            }
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            drop(silent);

            // The limit taken by silent clients: the next waits for their deadline.
            let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
                .map(|_| TcpStream::connect(addr).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let t = Instant::now();
            assert_eq!(status(&get(addr, "GET", "/healthz")), 200);
            let waited = t.elapsed();
            assert!(
                waited > Duration::from_millis(500) && waited < REQUEST_TIMEOUT * 2,
                "{waited:?}"
            );
            drop(held);
        });
    }

    /// Connections are served by kept threads, not a thread started for each: twenty
    /// requests one after the other meet one thread (two or three if a request comes
    /// before the last one's thread is free again), not twenty.
    #[test]
    fn connection_threads_are_kept() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let record = seen.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                serve(listener, &stop, move |_| {
                    let mut ids = record.lock().unwrap();
                    ids.insert(std::thread::current().id());
                    Response::text(200, "ok\n")
                })
            });
            for _ in 0..20 {
                assert_eq!(status(&get(addr, "GET", "/healthz")), 200);
            }
            stop.store(true, Ordering::SeqCst);
        });
        let threads = seen.lock().unwrap().len();
        assert!(
            (1..=3).contains(&threads),
            "{threads} threads for 20 requests"
        );
    }

    /// `/healthz` and reloads do not wait for a turn to render: with every turn taken by
    /// slow `/metrics` answers, both are answered. (Found by a review: reloads of a large
    /// policy file held the turns, and `/healthz` took over 2 s.)
    #[test]
    fn health_and_reloads_do_not_wait_behind_renderings() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        let rendering = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(AtomicBool::new(false));
        let (entered, opened) = (rendering.clone(), gate.clone());
        // Everything is asserted after the server has stopped.
        let (turns_taken, answers, scrapes) = std::thread::scope(|s| {
            s.spawn(|| {
                serve(listener, &stop, move |req| match route(req) {
                    Ok(Route::Metrics) => {
                        entered.fetch_add(1, Ordering::SeqCst);
                        while !opened.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Response::prometheus("qosgw_x 1\n")
                    }
                    Ok(_) => Response::text(200, "ok\n"),
                    Err(resp) => resp,
                })
            });
            let scrapes: Vec<_> = (0..MAX_HANDLERS + 2)
                .map(|_| s.spawn(move || status(&get(addr, "GET", "/metrics"))))
                .collect();
            let t = Instant::now();
            while rendering.load(Ordering::SeqCst) < MAX_HANDLERS
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let turns_taken = rendering.load(Ordering::SeqCst);
            let (tx, rx) = mpsc::channel();
            for (method, path) in [("GET", "/healthz"), ("POST", "/-/reload")] {
                let tx = tx.clone();
                s.spawn(move || tx.send(status(&get(addr, method, path))));
            }
            let answers: Vec<_> = (0..2)
                .map(|_| rx.recv_timeout(Duration::from_secs(3)).ok())
                .collect();
            gate.store(true, Ordering::SeqCst);
            let scrapes: Vec<u16> = scrapes.into_iter().map(|t| t.join().unwrap()).collect();
            stop.store(true, Ordering::SeqCst);
            (turns_taken, answers, scrapes)
        });
        assert_eq!(turns_taken, MAX_HANDLERS);
        assert_eq!(
            answers,
            [Some(200), Some(200)],
            "answered while every turn was taken"
        );
        assert_eq!(scrapes, [200; MAX_HANDLERS + 2]);
    }

    #[test]
    fn stop_flag_ends_serve_while_idle() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let server = s.spawn(|| serve(listener, &stop, |_| Response::text(200, "")));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!server.is_finished());
            let t = Instant::now();
            stop.store(true, Ordering::SeqCst);
            server.join().unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
        });
    }

    fn req(method: &str, path: &str, peer: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            peer: peer.parse().unwrap(),
        }
    }

    #[test]
    fn routing_rules() {
        let ok = |m, p, peer| route(&req(m, p, peer)).unwrap();
        let err = |m, p, peer| route(&req(m, p, peer)).unwrap_err().status;
        assert_eq!(ok("GET", "/metrics", "127.0.0.1:5"), Route::Metrics);
        assert_eq!(ok("HEAD", "/metrics", "127.0.0.1:5"), Route::Metrics);
        assert_eq!(ok("GET", "/healthz", "127.0.0.1:5"), Route::Healthz);
        assert_eq!(ok("GET", "/policies", "127.0.0.1:5"), Route::Policies);
        assert_eq!(ok("POST", "/-/reload", "127.0.0.1:5"), Route::Reload);
        assert_eq!(ok("POST", "/-/reload", "127.8.9.10:5"), Route::Reload);
        assert_eq!(ok("POST", "/-/reload", "[::1]:5"), Route::Reload);
        assert_eq!(
            ok("POST", "/-/reload", "[::ffff:127.0.0.1]:5"),
            Route::Reload
        );
        // Reads are allowed from anywhere the listener accepts.
        assert_eq!(ok("GET", "/metrics", "10.0.0.7:5"), Route::Metrics);
        assert_eq!(ok("GET", "/policies", "[2001:db8::1]:5"), Route::Policies);
        // State changes only from loopback.
        assert_eq!(err("POST", "/-/reload", "10.0.0.7:5"), 403);
        assert_eq!(err("POST", "/-/reload", "[2001:db8::1]:5"), 403);
        assert_eq!(err("POST", "/-/reload", "[::ffff:10.0.0.7]:5"), 403);
        assert_eq!(err("POST", "/-/reload", "0.0.0.0:5"), 403);
        let r = route(&req("POST", "/-/reload", "192.0.2.1:5")).unwrap_err();
        assert!(r.body.contains("only accepted from loopback"), "{}", r.body);
        // 404 before 405 before 403.
        assert_eq!(err("POST", "/other", "10.0.0.7:5"), 404);
        assert_eq!(err("GET", "/metrics/", "127.0.0.1:5"), 404);
        assert_eq!(err("get", "/metrics", "127.0.0.1:5"), 405);
        assert_eq!(err("DELETE", "/-/reload", "10.0.0.7:5"), 405);
        assert_eq!(err("GET", "/-/reload", "127.0.0.1:5"), 405);
        assert_eq!(err("PUT", "/healthz", "127.0.0.1:5"), 405);
    }

    #[test]
    fn request_paths() {
        assert_eq!(request_path("/metrics?x=1"), "/metrics");
        assert_eq!(request_path("/metrics#top"), "/metrics");
        assert_eq!(request_path("http://h:9477/healthz?a"), "/healthz");
        assert_eq!(request_path("http://h:9477"), "/");
        assert_eq!(request_path("*"), "*");
    }
}
