//! `cargo xtask schemathesis`: holds the running server to its own OpenAPI
//! document (docs/protocol.md §7 "`GET /openapi.json`"). Schemathesis, a property-based
//! API tester from PyPI, reads `/openapi.json` of a live `onceflight` and
//! sends it generated requests, valid and invalid, checking every answer:
//! no 5xx, a status the document lists, its content type, headers and body
//! schema, valid data accepted and invalid data refused.
//!
//! Two servers on the memory store are tested in turn: one without tokens
//! and one with `ONCEFLIGHT_TOKENS` configured, where every request carries
//! a valid bearer token, so the `/v1` routes are exercised past
//! authentication. Schemathesis is installed into a virtualenv under the
//! target directory, pinned to [`VERSION`], and reused while it holds that
//! version. Generation is seeded and bounded, so a run is repeatable and
//! takes about a minute; it only ever talks to 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::bench::{build_debug_server, target_dir};
use onceflight_test_support::process::TempDir;
use onceflight_test_support::server::{Launch, Server};

use crate::process;

/// The schemathesis release the run is pinned to; raise it deliberately.
pub(crate) const VERSION: &str = "4.32.5";

/// Fixed seed: a failure seen once is seen again on the next run.
const SEED: &str = "20251129";

/// Test cases per operation and phase. With 10 operations and two phases
/// (coverage, fuzzing), a run sends roughly a thousand requests.
const MAX_EXAMPLES: &str = "40";

/// How long one request may take before schemathesis counts it as a
/// failure. Nothing the run sends should take more than a few milliseconds
/// (long-polls are capped by the hooks), so this only turns a hang into a
/// clear failure.
const REQUEST_TIMEOUT_SECS: &str = "10";

/// Longest one schemathesis run may take before it is stopped and the step
/// fails: a hang detector, far above the ~30 s a run takes.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// How long the server may take to answer `/healthz` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespace of the bearer token of the authenticated run.
const NAMESPACE: &str = "schemathesis";

/// The checks. `all` runs every check schemathesis has, none excluded:
/// those that cannot apply here skip themselves (`object_level_authorization`
/// needs two identities, `use_after_free` and `ensure_resource_availability`
/// need stateful links, `ignored_auth` needs an operation whose security
/// is mandatory: `/v1` routes need a token only when tokens are configured,
/// so the document lists anonymous access as an alternative).
const CHECKS: &str = "all";

/// The configuration file, beside the hooks. Per-operation expectations
/// that only the API's semantics can tell schemathesis live here.
const CONFIG: &str = r#"# Written by `cargo xtask schemathesis` (xtask/src/schemathesis.rs).
hooks = "hooks.py"
# What valid data may be answered with. Stricter than schemathesis's default,
# which also accepts 401, 403, 429 and 5xx: no run may see a 401 (the server
# has no tokens, or every request carries a valid one), so one means the
# authenticated run is not getting past authentication; 5xx is never right.
# 404 is a GET or DELETE of a key without a record, 409 a fenced operation
# with a token that is not the record's current one.
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409"]

[[operations]]
include-operation-id = "claim"
# A claim can be valid on its own and still be refused with 422
# fingerprint_mismatch (docs/protocol.md §3): when the key's record was created by an
# earlier claim with another kind or fingerprint. The fuzzer reuses simple
# keys ("0", "00") across cases, so this happens; it is the documented answer.
checks.positive_data_acceptance.expected-statuses = ["2xx", "422"]

[[operations]]
include-operation-id = "list_records"
# A listing's parameters can each be valid and still be refused with 400
# invalid_request (docs/protocol.md §7): `stuck` or `retry` beside another
# `state`, and a `cursor` this server did not write (cursors are opaque).
# Neither rule between parameters nor an opaque cursor can be written in
# the document, so the fuzzer sends them.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
"#;

/// Schemathesis hooks (Python, loaded through `hooks` in [`CONFIG`]). Each
/// one closes a gap between what JSON Schema can say and what the API
/// means; none of them hides a wrong answer.
const HOOKS: &str = r#"# Written by `cargo xtask schemathesis` (xtask/src/schemathesis.rs).
import re
from urllib.parse import unquote

import schemathesis

# A GET with wait_ms holds its answer while the record's lease is live
# (docs/protocol.md §7): with the fuzzer's long leases, a valid wait_ms of up to 60 s
# would stall the run. Valid waits are capped at this many milliseconds;
# out-of-range ones (negative, over 60000, not a number) go through
# unchanged, so their 400 is still checked. Long-polls themselves are
# covered by the server's own tests.
LONGEST_WAIT_MS = 200
MAX_WAIT_MS = 60000

# What the server accepts as a key (docs/protocol.md §2): 1 to 512 bytes of UTF-8
# without control characters.
KEY = re.compile(r"[^\u0000-\u001F\u007F-\u009F]+")
MAX_KEY_BYTES = 512


def _whole(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@schemathesis.hook
def map_body(context, body):
    # JSON Schema 2020-12 (OpenAPI 3.1) calls 5.0 an integer, so the fuzzer
    # sends whole floats for integer fields. The API reads integers as JSON
    # integers: a token or duration written `5.0` or `5e0` is 400
    # invalid_request (docs/protocol.md §7; server/tests/api/routes/ holds
    # it to that), which the document cannot express. Integer fields are top-level, so
    # whole floats there are written as the integers they stand for (a
    # complete's `result` may be any JSON, so rewriting it changes nothing
    # the server checks). Nested values are left alone.
    if isinstance(body, dict):
        return {name: _whole(value) for name, value in body.items()}
    return body


@schemathesis.hook
def map_query(context, query):
    operation = context.operation
    if (
        operation is not None
        and operation.method.upper() == "GET"
        and operation.path == "/v1/requests/{key}"
        and query
    ):
        wait = query.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= MAX_WAIT_MS:
            query = {**query, "wait_ms": min(wait, LONGEST_WAIT_MS)}
    return query


@schemathesis.hook
def filter_failure(context, failure, case, response):
    # Drops a "schema-valid request rejected" failure only when the key the
    # request carried was not a valid key after all, for one of two reasons
    # the document cannot prevent:
    # - schemathesis percent-decodes a generated path value before encoding
    #   it, so a generated key holding the text "%0C" goes out as a form
    #   feed, which the server rightly refuses;
    # - JSON Schema counts a string's length in characters, the server counts
    #   UTF-8 bytes (docs/protocol.md §2), so 200 three-byte characters pass the
    #   document's maxLength but are 600 bytes.
    # Any other rejection of valid data still fails the run.
    if failure.code != "ST202":
        return True
    key = (case.path_parameters or {}).get("key")
    if isinstance(key, str):
        sent = unquote(key)
        if not KEY.fullmatch(sent) or len(sent.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            return False
    return True
"#;

/// Builds the server, installs schemathesis if needed, and runs it against
/// a server without tokens and one with tokens. Fails when either run
/// reports a failure; the servers are stopped in every case.
pub(crate) fn run() -> Result<()> {
    let started = Instant::now();
    let target = target_dir(&process::repo_root());
    let server = build_debug_server()?;
    let schemathesis = install(&target.join("schemathesis-venv"))?;

    let work = TempDir::new("schemathesis")?;
    std::fs::write(work.path().join("hooks.py"), HOOKS).context("could not write hooks.py")?;

    for auth in [Auth::None, Auth::Bearer(throwaway_token())] {
        let label = auth.label();
        eprintln!("xtask: schemathesis {VERSION} against a server {label}");
        let config = work.path().join("schemathesis.toml");
        std::fs::write(&config, auth.config())
            .with_context(|| format!("could not write {}", config.display()))?;
        let server = start_server(&server, &auth)?;
        let result = run_schemathesis(&schemathesis, &config, &server, &auth, work.path());
        if result.is_err() {
            eprintln!("{}", server.log_tail(30));
        }
        drop(server);
        result.with_context(|| format!("schemathesis found failures on the server {label}"))?;
    }
    eprintln!(
        "xtask: schemathesis passed on both servers in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// Whether the runs authenticate.
#[derive(Debug)]
enum Auth {
    /// No tokens configured, no `Authorization` header.
    None,
    /// `ONCEFLIGHT_TOKENS` holds this token, and every request carries it.
    Bearer(String),
}

impl Auth {
    fn label(&self) -> &'static str {
        match self {
            Auth::None => "without tokens",
            Auth::Bearer(_) => "with tokens (requests carry a valid bearer token)",
        }
    }

    /// [`CONFIG`], plus the header for an authenticated run. The token is
    /// read from the environment there rather than written into the file or
    /// onto the command line, which xtask prints.
    fn config(&self) -> String {
        match self {
            Auth::None => CONFIG.to_owned(),
            Auth::Bearer(_) => CONFIG.replacen(
                "hooks = \"hooks.py\"\n",
                "hooks = \"hooks.py\"\nheaders = { Authorization = \"Bearer \
                 ${ONCEFLIGHT_SCHEMATHESIS_TOKEN}\" }\n",
                1,
            ),
        }
    }
}

/// A bearer token for one run: unguessable enough for a server that lives a
/// minute on loopback, and never printed.
fn throwaway_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("st-{nanos:x}-{:x}", std::process::id())
}

/// Returns the `schemathesis` executable of the virtualenv at `venv`,
/// creating the virtualenv and installing [`VERSION`] unless it holds that
/// version already.
fn install(venv: &Path) -> Result<PathBuf> {
    let bin = venv.join("bin");
    let schemathesis = bin.join("schemathesis");
    if installed_version(&schemathesis).as_deref() == Some(VERSION) {
        return Ok(schemathesis);
    }
    let Some(python) = process::find_on_path("python3") else {
        bail!(
            "`python3` is not on PATH; schemathesis needs it. Install it with \
             `apt-get install python3 python3-venv`."
        );
    };
    eprintln!(
        "xtask: installing schemathesis {VERSION} into {}",
        venv.display()
    );
    process::output(
        Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )
    .context(
        "could not create a Python virtualenv; on Debian and Ubuntu, install the venv module \
         with `apt-get install python3-venv`",
    )?;
    process::run(
        Command::new(bin.join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("schemathesis=={VERSION}"))
            .stdin(Stdio::null()),
    )
    .context("could not install schemathesis from PyPI")?;
    match installed_version(&schemathesis) {
        Some(version) if version == VERSION => Ok(schemathesis),
        other => bail!(
            "installed schemathesis {VERSION}, but {} reports {other:?}",
            schemathesis.display()
        ),
    }
}

/// The version `schemathesis --version` reports (`schemathesis, version
/// 4.32.5`), if it runs.
fn installed_version(schemathesis: &Path) -> Option<String> {
    if !schemathesis.is_file() {
        return None;
    }
    let out = process::output(Command::new(schemathesis).arg("--version")).ok()?;
    out.trim()
        .rsplit(' ')
        .next()
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

/// One schemathesis run against `server`; fails when schemathesis reports
/// a failure or does not finish within [`RUN_TIMEOUT`].
fn run_schemathesis(
    schemathesis: &Path,
    config: &Path,
    server: &Server,
    auth: &Auth,
    work: &Path,
) -> Result<()> {
    let mut cmd = Command::new(schemathesis);
    cmd.arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{}/openapi.json", server.base_url()))
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        // One worker: requests then go out in the seed's order, and
        // Python 3.11's parser, which hypothesis calls while it builds
        // strategies, is not safe to run in two threads at once ("AST
        // constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", REQUEST_TIMEOUT_SECS])
        // Examples found in one run are not replayed in the next: every run
        // is the seed's and nothing else.
        .args(["--generation-database", "none"])
        .arg("--no-color")
        // Its reports and caches go to the throw-away directory, not the
        // repository.
        .current_dir(work)
        .stdin(Stdio::null());
    if let Auth::Bearer(token) = auth {
        cmd.env("ONCEFLIGHT_SCHEMATHESIS_TOKEN", token);
    }
    let what = process::describe(&cmd);
    eprintln!("xtask: running `{what}`");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{what}`"))?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("`{what}` failed ({status}); its report above lists each failure");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {RUN_TIMEOUT:?}; stopped it");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `binary serve` on the memory store on a free loopback port and
/// waits until it is ready; the caller's own `ONCEFLIGHT_*` settings (a
/// tokens file, another store) are not passed on, so they cannot change what
/// is tested.
fn start_server(binary: &Path, auth: &Auth) -> Result<Server> {
    let mut launch = Launch::new(binary)
        .args(&["--store", "memory://"])
        .ready_when("/healthz", READY_TIMEOUT);
    if let Auth::Bearer(token) = auth {
        launch = launch.env("ONCEFLIGHT_TOKENS", &format!("{NAMESPACE}:{token}"));
    }
    launch.start_blocking()
}

#[cfg(test)]
mod tests {
    use super::{Auth, CONFIG};

    #[test]
    fn authenticated_config_reads_the_token_from_the_environment() {
        let config = Auth::Bearer("secret-token-value".to_owned()).config();
        assert!(
            config.contains("Authorization = \"Bearer ${ONCEFLIGHT_SCHEMATHESIS_TOKEN}\""),
            "the header names the variable: {config}"
        );
        assert!(
            !config.contains("secret-token-value"),
            "the token itself is never written: {config}"
        );
        // TOML needs top-level keys before the first table.
        let header = config.find("headers =").expect("a header line");
        let table = config.find("[[operations]]").expect("a table");
        assert!(header < table, "the header is a top-level key: {config}");
    }

    #[test]
    fn anonymous_config_sends_no_header() {
        assert_eq!(Auth::None.config(), CONFIG, "the file as written");
        assert!(!CONFIG.contains("headers"), "no header: {CONFIG}");
    }
}
