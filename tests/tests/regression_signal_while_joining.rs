//! Regression: a new node still asking its seeds for the cluster (for up to 30 s when none
//! answers) ignored SIGINT and died on SIGTERM without its clean shutdown. Both now stop it at
//! once with exit status 0, leaving its data dir reusable.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{free_port, kvd_bin};

fn joining_node(dir: &std::path::Path) -> Child {
    // Port 1 of the loopback answers nothing: the seed never replies.
    Command::new(kvd_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir)
        .args(["--seed", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvd")
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_and_sigterm_stop_a_node_that_is_still_joining() {
    let dir = tempfile::tempdir().unwrap();
    for signal in ["INT", "TERM"] {
        let data = dir.path().join(signal);
        let mut child = joining_node(&data);
        // Well into the seed's retries (the data dir exists once storage is open).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !data.join("storage").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(child.try_wait().unwrap().is_none(), "still joining");
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let code = exit_within(&mut child, Duration::from_secs(10));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(code, Some(0), "SIG{signal}: {err}");

        // The data dir it leaves (storage without data, no identity yet) starts again.
        let mut again = joining_node(&data);
        std::thread::sleep(Duration::from_millis(1500));
        let early = again.try_wait().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(again.id().to_string())
            .status()
            .unwrap();
        let code = exit_within(&mut again, Duration::from_secs(10));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut again.stderr.take().unwrap(), &mut err).unwrap();
        assert!(early.is_none(), "the second start ended by itself: {err}");
        assert_eq!(code, Some(0), "{err}");
    }
}
