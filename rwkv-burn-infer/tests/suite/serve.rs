//! `rwkv serve` end to end: a server started on a free loopback port with the embedded model,
//! driven over HTTP (a small client here, so that the tests can send any bytes and hang up at
//! any point) and by the official `openai` Python package.

use rwkv_burn::random::SplitMix64;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `rwkv serve`, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv"))
            .args(["--threads", "2", "serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rwkv serve");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("rwkv serve ended before listening: {:?}", child.wait());
            }
            if let Some(url) = line.trim().split("listening on http://").nth(1) {
                break url.parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers (lower-case names) and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
}

fn send_request(stream: &mut TcpStream, method: &str, path: &str, headers: &[&str], body: &[u8]) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
}

/// Waits (up to 10 s) until `/metrics` shows every line of `lines`; returns the last text.
fn wait_for_metrics(server: &Server, lines: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..1000 {
        let r = request(server.addr, "GET", "/metrics", &[], b"");
        text = String::from_utf8_lossy(&r.body).into_owned();
        if lines.iter().all(|l| text.contains(&format!("{l}\n"))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    text
}

/// Starts a streamed completion and waits for its first bytes (the response has begun).
fn open_stream(addr: SocketAddr, body: &Value) -> TcpStream {
    let mut stream = connect(addr);
    send_request(
        &mut stream,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let mut first = [0u8; 1];
    assert_eq!(stream.read(&mut first).unwrap(), 1, "the stream began");
    stream
}

/// One request, the whole response read (chunked bodies decoded).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut stream = connect(addr);
    send_request(&mut stream, method, path, headers, body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 4 + size..];
    }
}

fn post(server: &Server, path: &str, body: &Value) -> Response {
    request(server.addr, "POST", path, &[], body.to_string().as_bytes())
}

/// The text of a completion, whole or streamed.
fn completion_text(response: &Response) -> String {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    if response.header("content-type") == Some("text/event-stream") {
        let events = response.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        events[..events.len() - 1]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
            .collect()
    } else {
        response.json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn python_with_openai() -> Option<PathBuf> {
    std::env::var_os("RWKV_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/rwkv-burn/torch-venv/bin/python")),
        )
        .find(|python| {
            Command::new(python)
                .args(["-c", "import openai"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn the_official_openai_client_works_against_it() {
    let Some(python) = python_with_openai() else {
        // CI installs it (scripts/setup-torch.sh); elsewhere it is an optional download.
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with the openai package; run scripts/setup.sh --tests"
        );
        eprintln!("skipped: no Python with the openai package (scripts/setup.sh --tests)");
        return;
    };
    let server = Server::start(&["--api-key", "test-key"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(server.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the key: 401, OpenAI's error body.
    let refused = post(&server, "/v1/completions", &json!({"prompt": "x"}));
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["type"], "authentication_error");
    let wrong = request(
        server.addr,
        "GET",
        "/v1/models",
        &["Authorization: Bearer test-kez"],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
}

/// The requests of the batching test: mixed prompts, lengths, sampling and streaming.
fn mixed_requests() -> Vec<Value> {
    let prompts = [
        "Hello",
        "The quick brown fox",
        "x",
        "Once upon a time there was",
        "1 2 3",
    ];
    (0..32)
        .map(|i| {
            json!({
                "prompt": prompts[i % prompts.len()],
                "max_tokens": 8 + (i * 7) % 40,
                "temperature": if i % 3 == 0 { 0.0 } else { 1.0 },
                "top_p": 0.9,
                "seed": 100 + i,
                "stream": i % 2 == 1,
            })
        })
        .collect()
}

/// Reads part of a stream and hangs up.
fn cancel_halfway(addr: SocketAddr, body: &Value) {
    let mut stream = open_stream(addr, body);
    let mut buf = [0u8; 600];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    drop(stream);
}

#[test]
fn batching_is_invisible() {
    assert_batching_invisible(&[], 32);
}

/// The same with 8-bit weights (packed on flex, with 8-bit inputs where the CPU has VNNI).
#[test]
fn batching_is_invisible_with_8_bit_weights() {
    assert_batching_invisible(&["--weights", "q8"], 12);
}

/// `count` of the mixed requests give the same text alone and all at once.
fn assert_batching_invisible(args: &[&str], count: usize) {
    let mut all = vec!["--max-batch", "32", "--cache-mb", "0"];
    all.extend(args);
    let server = Server::start(&all);
    let requests: Vec<Value> = mixed_requests().into_iter().take(count).collect();
    let alone: Vec<String> = requests
        .iter()
        .map(|r| completion_text(&post(&server, "/v1/completions", r)))
        .collect();
    // All at once, with every fifth also started as a stream that hangs up after a few events.
    let together: Vec<String> = std::thread::scope(|scope| {
        let cancelled: Vec<_> = (0..requests.len())
            .step_by(5)
            .map(|i| {
                let mut body = requests[i].clone();
                body["stream"] = json!(true);
                body["max_tokens"] = json!(400);
                let addr = server.addr;
                scope.spawn(move || cancel_halfway(addr, &body))
            })
            .collect();
        let handles: Vec<_> = requests
            .iter()
            .map(|r| scope.spawn(|| completion_text(&post(&server, "/v1/completions", r))))
            .collect();
        for c in cancelled {
            c.join().unwrap();
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: {}", requests[i]);
    }
    // Nothing is left running: the hung-up streams were freed.
    let metrics = wait_for_metrics(&server, &["rwkv_active_sequences 0", "rwkv_queue_length 0"]);
    assert!(metrics.contains("rwkv_active_sequences 0\n"), "{metrics}");
    assert!(metrics.contains("rwkv_queue_length 0\n"), "{metrics}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-prompt-tokens", "64", "--max-body-bytes", "4096"]);
    let chat = "/v1/chat/completions";
    let completions = "/v1/completions";
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (completions, b"{not json".to_vec(), 400, None),
        (completions, b"[1, 2]".to_vec(), 400, None),
        (completions, b"{\"prompt\": NaN}".to_vec(), 400, None),
        (
            completions,
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            None,
        ),
        (
            completions,
            json!({}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            completions,
            json!({"prompt": 5}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            completions,
            json!({"prompt": "x".repeat(65)}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            completions,
            json!({"prompt": "x", "max_tokens": 0})
                .to_string()
                .into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            completions,
            json!({"prompt": "x", "max_tokens": 1u64 << 40})
                .to_string()
                .into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            completions,
            json!({"prompt": "x", "max_tokens": "10"})
                .to_string()
                .into_bytes(),
            400,
            Some("max_tokens"),
        ),
        (
            completions,
            json!({"prompt": "x", "temperature": -0.5})
                .to_string()
                .into_bytes(),
            400,
            Some("temperature"),
        ),
        (
            completions,
            json!({"prompt": "x", "top_p": 0}).to_string().into_bytes(),
            400,
            Some("top_p"),
        ),
        (
            completions,
            json!({"prompt": "x", "top_p": 1.01})
                .to_string()
                .into_bytes(),
            400,
            Some("top_p"),
        ),
        (
            completions,
            json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})
                .to_string()
                .into_bytes(),
            400,
            Some("stop"),
        ),
        (
            completions,
            json!({"prompt": "x", "stream": "yes"})
                .to_string()
                .into_bytes(),
            400,
            Some("stream"),
        ),
        (
            completions,
            json!({"prompt": [1, 99999]}).to_string().into_bytes(),
            400,
            Some("prompt"),
        ),
        (
            chat,
            json!({}).to_string().into_bytes(),
            400,
            Some("messages"),
        ),
        (
            chat,
            json!({"messages": []}).to_string().into_bytes(),
            400,
            Some("messages"),
        ),
        (
            chat,
            json!({"messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            Some("messages[0].role"),
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": 3}]})
                .to_string()
                .into_bytes(),
            400,
            Some("messages[0].content"),
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": ""}]})
                .to_string()
                .into_bytes(),
            400,
            Some("messages[0].content"),
        ),
        (
            chat,
            json!({"messages": [{"role": "system", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            Some("messages"),
        ),
        (
            chat,
            json!({"messages": user, "think": true})
                .to_string()
                .into_bytes(),
            400,
            Some("think"),
        ),
        (
            chat,
            json!({"messages": user, "temperature": "warm"})
                .to_string()
                .into_bytes(),
            400,
            Some("temperature"),
        ),
        (chat, vec![b' '; 5000], 413, None),
        ("/v1/nothing", b"{}".to_vec(), 404, None),
    ];
    for (path, body, status, param) in &cases {
        let r = request(server.addr, "POST", path, &[], body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(
            r.status,
            *status,
            "{path} {shown}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let error = &r.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}: {error}"
        );
        assert!(error["type"].is_string(), "{shown}: {error}");
        if let Some(param) = param {
            assert_eq!(error["param"], *param, "{shown}: {error}");
        }
    }
    // Still serving, and a good request still works.
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
    let ok = post(&server, chat, &json!({"messages": user, "max_tokens": 3}));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
}

/// Random bytes and mutated good bodies: each gets an answer below 500, and the server keeps
/// answering.
#[test]
fn fuzzed_bodies_never_break_the_server() {
    let server = Server::start(&["--max-body-bytes", "65536"]);
    let seeds = [
        json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0.5, "stop": ["a"], "seed": 1}),
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": true}),
    ];
    let mut rng = SplitMix64::new(7);
    for round in 0..300 {
        let path = if round % 2 == 0 {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let mut body = seeds[round % 2].to_string().into_bytes();
        match rng.next_u64() % 4 {
            0 => {
                // Random bytes.
                let len = (rng.next_u64() % 200) as usize;
                body = (0..len).map(|_| rng.next_u64() as u8).collect();
            }
            1 => {
                // Flip a few bytes.
                for _ in 0..1 + rng.next_u64() % 4 {
                    let at = (rng.next_u64() as usize) % body.len();
                    body[at] = rng.next_u64() as u8;
                }
            }
            2 => {
                // Cut it short.
                body.truncate((rng.next_u64() as usize) % body.len());
            }
            _ => {
                // Replace a value with a random JSON value.
                let values = [
                    "null",
                    "-1",
                    "1e308",
                    "[]",
                    "{}",
                    "\"\"",
                    "true",
                    "99999999999999999999",
                    "0.0",
                    "[[[[]]]]",
                ];
                let text = String::from_utf8(body).unwrap();
                let at = text.find(':').unwrap_or(0);
                let pick = values[(rng.next_u64() as usize) % values.len()];
                let end = text[at + 1..]
                    .find([',', '}'])
                    .map_or(text.len(), |e| at + 1 + e);
                body = format!("{}:{}{}", &text[..at], pick, &text[end..]).into_bytes();
            }
        }
        let r = request(server.addr, "POST", path, &[], &body);
        assert!(
            r.status < 500,
            "{path} {:?}: {} {}",
            String::from_utf8_lossy(&body),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if r.status != 200 {
            assert!(r.json()["error"]["message"].is_string());
        }
    }
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn a_full_queue_answers_429_and_a_timeout_504() {
    let server = Server::start(&[
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--request-timeout",
        "10",
        "--max-tokens-limit",
        "1000000",
    ]);
    let long = json!({"prompt": "Once", "max_tokens": 1_000_000, "stream": true});
    // The first fills the batch, the second waits.
    let mut first = open_stream(server.addr, &long);
    let running = ["rwkv_active_sequences 1", "rwkv_queue_length 0"];
    let metrics = wait_for_metrics(&server, &running);
    assert!(metrics.contains("rwkv_active_sequences 1\n"), "{metrics}");
    let second = std::thread::spawn({
        let addr = server.addr;
        let body = json!({"prompt": "x", "max_tokens": 2}).to_string();
        move || request(addr, "POST", "/v1/completions", &[], body.as_bytes())
    });
    // Once the second is seen waiting, a third gets 429.
    let metrics = wait_for_metrics(&server, &["rwkv_queue_length 1"]);
    assert!(metrics.contains("rwkv_queue_length 1\n"), "{metrics}");
    let third = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "y", "max_tokens": 2}),
    );
    assert_eq!(
        third.status,
        429,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(third.json()["error"]["type"], "rate_limit_error");
    // The long one runs into --request-timeout: its stream ends with an error event.
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("timeout_error") && rest.contains("[DONE]"),
        "{rest}"
    );
    // The waiting one then ran (or timed out waiting, which is a 504, not a loss).
    let second = second.join().unwrap();
    assert!(matches!(second.status, 200 | 504), "{}", second.status);
    let slow = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1_000_000}),
    );
    assert_eq!(slow.status, 504, "{}", String::from_utf8_lossy(&slow.body));
}

#[test]
fn a_repeated_conversation_starts_from_the_cached_state() {
    let server = Server::start(&[]);
    let messages = json!([
        {"role": "user", "content": "Tell me a long story about a cat and a dog."},
        {"role": "assistant", "content": "Once upon a time."},
        {"role": "user", "content": "Go on."}
    ]);
    let body = json!({"messages": messages, "max_tokens": 10, "temperature": 0});
    let first = post(&server, "/v1/chat/completions", &body).json();
    let mut longer = messages.as_array().unwrap().clone();
    longer.push(json!({"role": "assistant", "content": "And then?"}));
    longer.push(json!({"role": "user", "content": "More."}));
    let second = post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": longer, "max_tokens": 10, "temperature": 0}),
    )
    .json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // The first prompt is a prefix of the second: its state is reused.
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"], first["usage"]["prompt_tokens"],
        "{second}"
    );
    let again = post(&server, "/v1/chat/completions", &body).json();
    assert_eq!(
        again["choices"][0]["message"],
        first["choices"][0]["message"]
    );
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        first["usage"]["prompt_tokens"]
    );
}

#[test]
fn sigterm_ends_streams_with_a_last_event_and_exits_0() {
    let server = Server::start(&["--max-tokens-limit", "1000000"]);
    let body = json!({"prompt": "Once", "max_tokens": 1_000_000, "stream": true});
    let mut stream = open_stream(server.addr, &body);
    let status = server.terminate();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("shutting down") && rest.contains("[DONE]"),
        "{rest}"
    );
    assert!(status.success(), "{status:?}");
}

/// A request can start from a saved state by name (`rwkv_state`), and continues exactly as
/// `rwkv generate --state-in` does; states of another model, unknown names and names that
/// reach outside the folder are refused.
#[test]
fn requests_start_from_saved_states_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let rwkv = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rwkv"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let state = dir.path().join("genesis.safetensors");
    let state = state.to_str().unwrap();
    rwkv(&[
        "generate",
        "--prompt",
        "In the beginning God",
        "--max-tokens",
        "1",
        "--state-out",
        state,
    ]);
    let greedy = [
        "--temperature",
        "0",
        "--top-p",
        "1",
        "--presence-penalty",
        "0",
        "--frequency-penalty",
        "0",
        "--max-tokens",
        "20",
    ];
    let mut args = vec!["generate", "--prompt", " and", "--state-in", state];
    args.extend(greedy);
    let expected = rwkv(&args);
    // A state-tuning file in RWKV-PEFT's layout (`.pth`, `blocks.{i}.att.time_state`; token
    // shift is not part of it) starts `generate` and the server alike.
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let (config, _) = rwkv_burn_infer::embedded::load_default(&device).unwrap();
    let loaded = rwkv_burn::State::load(state, &config, &device).unwrap();
    let peft = rwkv_burn::time_state::to_time_state(&loaded, &config, 0).unwrap();
    let tuned = dir.path().join("tuned.pth");
    rwkv_burn::export::write_official(&tuned, &peft, rwkv_burn::export::StorageDType::F32).unwrap();
    let mut args = vec![
        "generate",
        "--prompt",
        " and",
        "--state-in",
        tuned.to_str().unwrap(),
    ];
    args.extend(greedy);
    let expected_tuned = rwkv(&args);
    let fixtures = std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let other = dir.path().join("other.safetensors");
    let v4 = fixtures.join("rwkv4/weights.pth");
    rwkv(&[
        "generate",
        "--model",
        v4.to_str().unwrap(),
        "--prompt",
        "x",
        "--max-tokens",
        "1",
        "--state-out",
        other.to_str().unwrap(),
    ]);

    let server = Server::start(&["--state-dir", dir.path().to_str().unwrap()]);
    let body = |name: &str| json!({"prompt": " and", "max_tokens": 20, "temperature": 0, "rwkv_state": name});
    let r = post(&server, "/v1/completions", &body("genesis"));
    assert_eq!(completion_text(&r), expected.strip_suffix('\n').unwrap());
    let r = post(&server, "/v1/completions", &body("tuned"));
    assert_eq!(
        completion_text(&r),
        expected_tuned.strip_suffix('\n').unwrap()
    );
    for name in ["other", "missing", "../genesis"] {
        let r = post(&server, "/v1/completions", &body(name));
        assert_eq!(
            r.status,
            400,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["param"], "rwkv_state", "{name}");
    }
    let plain = Server::start(&[]);
    let r = post(&plain, "/v1/completions", &body("genesis"));
    assert_eq!(r.status, 400);
}

/// A short prompt that arrives while a long one is being read is read first: the long one
/// does not hold back the requests behind it.
#[test]
fn a_long_prompt_does_not_hold_back_short_ones() {
    let server = Server::start(&["--prefill-chunk", "32", "--cache-mb", "0"]);
    let long = json!({"prompt": "In the beginning ".repeat(1500), "max_tokens": 1});
    let addr = server.addr;
    let reader = std::thread::spawn(move || {
        let r = request(
            addr,
            "POST",
            "/v1/completions",
            &[],
            long.to_string().as_bytes(),
        );
        (r.status, std::time::Instant::now())
    });
    let metrics = wait_for_metrics(&server, &["rwkv_active_sequences 1"]);
    assert!(metrics.contains("rwkv_active_sequences 1\n"), "{metrics}");
    let short = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 1}),
    );
    let short_done = std::time::Instant::now();
    assert_eq!(short.status, 200);
    let (status, long_done) = reader.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        short_done < long_done,
        "the short request waited for the long prompt"
    );
}

/// CORS is off unless an origin is allowed; then that origin (and only it) gets the headers,
/// preflight included.
#[test]
fn cors_is_off_by_default_and_on_for_the_given_origin() {
    let origin = "Origin: http://app.example";
    let closed = Server::start(&[]);
    let r = request(closed.addr, "GET", "/v1/models", &[origin], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let open = Server::start(&["--cors-origin", "http://app.example"]);
    let r = request(open.addr, "GET", "/v1/models", &[origin], b"");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let preflight = request(
        open.addr,
        "OPTIONS",
        "/v1/chat/completions",
        &[origin, "Access-Control-Request-Method: POST"],
        b"",
    );
    assert!(preflight.status < 300, "{}", preflight.status);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let other = request(
        open.addr,
        "GET",
        "/v1/models",
        &["Origin: http://evil.example"],
        b"",
    );
    assert_eq!(other.header("access-control-allow-origin"), None);
}
