#![cfg(feature = "aws")]
//! The AWS provider against moto server, an AWS API emulator started by each test on a free
//! loopback port. Resources are checked with boto3 (moto's own dependency), independently of
//! the code under test.
//!
//! moto's instances have made-up addresses: nothing here ever sends traffic to them. Instances
//! that must answer are mapped to real workers on 127.0.0.1 with the `fulcrum:endpoint` tag,
//! and every fulcrum process runs with `FULCRUM_AWS_PROBE_CIDRS=127.0.0.0/8`.

mod fixture;

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{eventually_every, get, Proc, Scratch, BIN};
use serde_json::Value;

/// Made-up credentials: the tests assert they never show up in user data, logs or state.
const ACCESS_KEY: &str = "AKIAFULCRUMTESTKEY01";
const SECRET_KEY: &str = "fulcrumTestSecretKey/DoNotLeak+0123456789";

/// A moto server on a free loopback port, killed (by PID) on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto, or skips the test when moto is not installed (a failure under CI=true).
    fn start(test: &str) -> Option<Moto> {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            let why = "moto server is not installed (pip install 'moto[server]'; scripts/install-test-deps does it)";
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test} needs moto and CI must run it: {why}");
            }
            eprintln!("SKIPPED {test}: {why} (this would fail under CI=true)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::env::temp_dir().join(format!("fulcrum-moto-{}-{port}.log", std::process::id()));
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            // As strict as real AWS where moto can be: unknown AMIs, key pairs and instance
            // types not offered in the region are refused.
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start moto server");
        let moto = Moto { child, port, log };
        let up = eventually_every(Duration::from_secs(30), Duration::from_millis(100), || {
            http_status(moto.port, "/moto-api/") == Some(200)
        });
        assert!(up, "moto did not start; log:\n{}", moto.log_text());
        Some(moto)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The environment every process talking to moto gets: the SDK's endpoint variable, fake
    /// credentials, a region, and nothing from the real user's AWS configuration.
    fn env(&self, cmd: &mut Command, region: &str) {
        cmd.env("AWS_ENDPOINT_URL", self.url())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", region)
            .env("AWS_DEFAULT_REGION", region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/fulcrum-test")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/fulcrum-test")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("FULCRUM_AWS_PROBE_CIDRS", "127.0.0.0/8");
    }

    /// Runs `fulcrum ARGS` against moto (≤ 3 min): (exit code, stdout, stderr).
    fn fulcrum(&self, state: &Path, region: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("FULCRUM_STATE_DIR", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.env(&mut cmd, region);
        let child = cmd.spawn().unwrap();
        let out = wait_output(
            child,
            Duration::from_secs(180),
            &format!("fulcrum {args:?}"),
        );
        let r = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            !r.1.contains(SECRET_KEY) && !r.2.contains(SECRET_KEY),
            "secret in output"
        );
        r
    }

    /// Runs a boto3 script against moto; `out` is printed as JSON and returned.
    fn py(&self, region: &str, script: &str) -> Value {
        let prelude = r#"
import base64, json, os, sys
import boto3
def client(name):
    return boto3.client(name, endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ec2 = client("ec2")
def tagged(name):
    return [{"Name": "tag:fulcrum:deployment", "Values": [name]}]
def instances(name):
    out = []
    for r in ec2.describe_instances(Filters=tagged(name))["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                out.append(i)
    return out
def tag(i, k):
    return next((t["Value"] for t in i.get("Tags", []) if t["Key"] == k), None)
def inventory(name):
    iam, s3 = client("iam"), client("s3")
    role = "fulcrum-%s-balancer" % name
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"] == role]
    profiles = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"] if p["InstanceProfileName"] == role]
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", []) if b["Name"].startswith("fulcrum-%s-" % name)]
    return {
        "instances": [i["InstanceId"] for i in instances(name)],
        "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=tagged(name))["SecurityGroups"]],
        "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tagged(name))["KeyPairs"]],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=tagged(name))["Volumes"] if v["State"] not in ("deleted", "deleting")],
        "roles": roles,
        "instance_profiles": profiles,
        "buckets": buckets,
    }
out = None
"#;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            &format!("{prelude}\n{script}\nprint(json.dumps(out, default=str))"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        self.env(&mut cmd, region);
        let out = wait_output(cmd.spawn().unwrap(), Duration::from_secs(60), "python");
        assert!(
            out.status.success(),
            "python failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "python printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn inventory(&self, region: &str, name: &str) -> Value {
        self.py(region, &format!("out = inventory({name:?})"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- moto log (last lines) ---\n{tail}");
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn wait_output(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + limit;
    // Drain pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// The status code of `GET path` on loopback, or None.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Write as _;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn empty(inv: &Value) -> bool {
    inv.as_object()
        .unwrap()
        .values()
        .all(|v| v.as_array().unwrap().is_empty())
}

fn write_topology(dir: &Scratch, text: &str) -> String {
    let p = dir.path("topology.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A small topology (3 workers) for the tests that need live processes or a failure.
fn small_topology(name: &str, c1: (&str, u32), c2: (&str, u32)) -> String {
    format!(
        r#"name = "{name}"

[[cluster]]
id = 1
route = "/cluster1"
instance_type = "{}"
count = {}

[[cluster]]
id = 2
route = "/cluster2"
instance_type = "{}"
count = {}

[balancer]
policy = "round-robin"
telemetry = "inband"
collect = ["poll"]

[[balancer.route]]
prefix = "/"
clusters = [1, 2]
"#,
        c1.0, c1.1, c2.0, c2.1
    )
}

/// Where instances fetch the binary in tests that do not exercise the S3 path (never fetched:
/// moto runs no user data).
const NO_BINARY: &str = "http://127.0.0.1:9/fulcrum";

#[test]
fn up_creates_exactly_the_plan_once_and_down_removes_everything() {
    let Some(moto) = Moto::start("up_creates_exactly_the_plan_once_and_down_removes_everything")
    else {
        return;
    };
    let state = Scratch::new("aws-seed");
    let r = "us-east-1";
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &["up", "--provider", "aws", "--yes", "--wait", "running"],
    );
    assert_eq!(code, 0, "up failed:\n{out}\n{err}");
    // The plan with every resource and the hourly cost: 5 × 0.0116 + 4 × 0.0928 + 0.0116.
    assert!(
        out.contains("Plan for deployment `seed` in us-east-1"),
        "{out}"
    );
    assert!(out.contains("$0.4408/h"), "{out}");
    assert!(out.contains("All 10 instances are running"), "{out}");

    let got = moto.py(
        r,
        r#"
iam, s3 = client("iam"), client("s3")
inst = instances("seed")
groups = ec2.describe_security_groups(Filters=tagged("seed"))["SecurityGroups"]
def rules(g):
    out = []
    for p in g["IpPermissions"]:
        for c in p.get("IpRanges", []):
            out.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), c["CidrIp"]])
        for c in p.get("Ipv6Ranges", []):
            out.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), c["CidrIpv6"]])
        for s in p.get("UserIdGroupPairs", []):
            out.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), s["GroupId"]])
    return sorted(out, key=str)
def user_data(i):
    a = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
    return base64.b64decode(a["UserData"]["Value"]).decode()
bucket = [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("fulcrum-seed-")]
policy = iam.get_role_policy(RoleName="fulcrum-seed-balancer", PolicyName="fulcrum-balancer")["PolicyDocument"]
out = {
    "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tagged("seed"))["KeyPairs"]],
    "groups": {g["GroupName"]: {"id": g["GroupId"], "rules": rules(g)} for g in groups},
    "instances": [{
        "id": i["InstanceId"],
        "type": i["InstanceType"],
        "role": tag(i, "fulcrum:role"),
        "cluster": tag(i, "fulcrum:cluster"),
        "name": tag(i, "Name"),
        "monitoring": i["Monitoring"]["State"],
        "profile": i.get("IamInstanceProfile", {}).get("Arn"),
        "key": i.get("KeyName"),
        "groups": [g["GroupId"] for g in i["SecurityGroups"]],
        "user_data": user_data(i),
    } for i in inst],
    "bucket": bucket,
    "objects": [o["Key"] for o in s3.list_objects_v2(Bucket=bucket[0]).get("Contents", [])] if bucket else [],
    "public_access_block": s3.get_public_access_block(Bucket=bucket[0])["PublicAccessBlockConfiguration"] if bucket else None,
    "policy": policy,
}
"#,
    );
    assert_eq!(got["key_pairs"], serde_json::json!(["fulcrum-seed"]));
    let groups = got["groups"].as_object().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let balancer_sg = groups["fulcrum-seed-balancer"]["id"].as_str().unwrap();
    let worker_sg = groups["fulcrum-seed-workers"]["id"].as_str().unwrap();
    assert_eq!(
        groups["fulcrum-seed-balancer"]["rules"],
        serde_json::json!([["tcp", 443, 443, "0.0.0.0/0"], ["tcp", 80, 80, "0.0.0.0/0"]]),
        "the balancer: HTTP and HTTPS from --allow-cidr, SSH closed"
    );
    assert_eq!(
        groups["fulcrum-seed-workers"]["rules"],
        serde_json::json!([["tcp", 8000, 8000, balancer_sg]]),
        "the workers: their port from the balancer's group only, SSH closed"
    );

    let inst = got["instances"].as_array().unwrap();
    assert_eq!(inst.len(), 10);
    let workers: Vec<&Value> = inst.iter().filter(|i| i["role"] == "worker").collect();
    let balancers: Vec<&Value> = inst.iter().filter(|i| i["role"] == "balancer").collect();
    assert_eq!(workers.len(), 9);
    assert_eq!(balancers.len(), 1);
    for (cluster, ty, n) in [("1", "t2.micro", 5), ("2", "t2.large", 4)] {
        let of: Vec<&&Value> = workers.iter().filter(|w| w["cluster"] == cluster).collect();
        assert_eq!(of.len(), n, "cluster {cluster}");
        assert!(
            of.iter().all(|w| w["type"] == ty),
            "cluster {cluster}: {of:?}"
        );
        let mut names: Vec<&str> = of.iter().map(|w| w["name"].as_str().unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "distinct Name tags: {names:?}");
        assert!(names
            .iter()
            .all(|x| x.starts_with(&format!("fulcrum-seed-c{cluster}-"))));
    }
    for i in inst {
        assert_eq!(
            i["monitoring"], "enabled",
            "detailed monitoring: {}",
            i["id"]
        );
        assert_eq!(i["key"], "fulcrum-seed");
        let ud = i["user_data"].as_str().unwrap();
        assert!(
            !ud.contains(SECRET_KEY),
            "secret key in user data of {}",
            i["id"]
        );
        assert!(
            !ud.to_ascii_lowercase().contains("secret_access_key"),
            "{ud}"
        );
        assert!(!ud.contains("AWS_ACCESS_KEY_ID"), "{ud}");
        // The binary comes through a presigned URL: a signature, an expiry, no key.
        assert!(
            ud.contains("X-Amz-Signature=") && ud.contains("X-Amz-Expires=3600"),
            "{ud}"
        );
        assert!(ud.contains("systemctl enable --now"), "{ud}");
    }
    for w in &workers {
        assert_eq!(w["groups"], serde_json::json!([worker_sg]));
        assert!(w["profile"].is_null(), "workers get no AWS permissions");
        let ud = w["user_data"].as_str().unwrap();
        assert!(
            ud.contains(&format!(
                "worker --cluster {} --port 8000",
                w["cluster"].as_str().unwrap()
            )),
            "{ud}"
        );
    }
    let b = balancers[0];
    assert_eq!(b["groups"], serde_json::json!([balancer_sg]));
    assert!(
        b["profile"]
            .as_str()
            .unwrap()
            .ends_with("/fulcrum-seed-balancer"),
        "{b}"
    );
    let ud = b["user_data"].as_str().unwrap();
    assert!(
        ud.contains("balance --config /etc/fulcrum/balancer.toml"),
        "{ud}"
    );
    assert!(
        ud.contains("provider = \"ec2\"") && ud.contains("cloudwatch_source = \"aws\""),
        "{ud}"
    );
    // The role may do exactly the balancer's two calls.
    let stmt = &got["policy"]["Statement"][0];
    assert_eq!(
        stmt["Action"],
        serde_json::json!(["ec2:DescribeInstances", "cloudwatch:GetMetricData"])
    );
    // The binary went to a private bucket.
    assert_eq!(got["bucket"].as_array().unwrap().len(), 1);
    assert_eq!(got["objects"], serde_json::json!(["fulcrum"]));
    assert_eq!(got["public_access_block"]["BlockPublicAcls"], true);

    // The private key: saved, owner-only. The state: ids, no secret.
    use std::os::unix::fs::PermissionsExt as _;
    let key = state.0.join("seed").join("fulcrum-seed.pem");
    let mode = std::fs::metadata(&key)
        .expect("private key saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let st = std::fs::read_to_string(state.0.join("seed/state.json")).unwrap();
    assert!(
        !st.contains(SECRET_KEY) && !st.contains("PRIVATE KEY"),
        "{st}"
    );

    // Twice: nothing new.
    let before = moto.inventory(r, "seed");
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &["up", "--provider", "aws", "--yes", "--wait", "running"],
    );
    assert_eq!(code, 0, "second up failed:\n{out}\n{err}");
    assert!(out.contains("Nothing to create"), "{out}");
    assert_eq!(
        moto.inventory(r, "seed"),
        before,
        "the second up changed something"
    );

    // Status names every instance.
    let (code, out, err) = moto.fulcrum(&state.0, r, &["status", "--provider", "aws", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["instances"].as_array().unwrap().len(), 10);

    // Down: nothing of the deployment is left, of any resource type. Twice: still fine.
    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws"]);
    assert_eq!(code, 0, "down failed:\n{out}\n{err}");
    let after = moto.inventory(r, "seed");
    assert!(empty(&after), "left behind: {after}");
    assert!(!key.exists(), "private key left behind");
    assert!(!state.0.join("seed/state.json").exists());
    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws"]);
    assert_eq!(code, 0, "second down failed:\n{out}\n{err}");
}

#[test]
fn a_failure_halfway_is_recorded_and_down_removes_everything() {
    let Some(moto) = Moto::start("a_failure_halfway_is_recorded_and_down_removes_everything")
    else {
        return;
    };
    let state = Scratch::new("aws-half");
    // Stockholm offers no t2 instances (in AWS, and in moto with type validation): cluster 1
    // (t3) launches, cluster 2 (t2.large) fails after everything before it exists.
    let r = "eu-north-1";
    let topo = write_topology(
        &state,
        &small_topology("half", ("t3.micro", 2), ("t2.large", 2)),
    );
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--yes",
            "--wait",
            "none",
            "--binary-url",
            NO_BINARY,
        ],
    );
    assert_ne!(code, 0, "up should fail:\n{out}\n{err}");
    assert!(err.contains("InvalidInstanceType"), "{err}");
    assert!(
        err.contains("stopped halfway") && err.contains("down"),
        "the error says what to do: {err}"
    );
    let half = moto.inventory(r, "half");
    assert_eq!(half["instances"].as_array().unwrap().len(), 2, "{half}");
    assert_eq!(
        half["security_groups"].as_array().unwrap().len(),
        2,
        "{half}"
    );
    assert_eq!(half["key_pairs"].as_array().unwrap().len(), 1, "{half}");

    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws", "-t", &topo]);
    assert_eq!(code, 0, "down failed:\n{out}\n{err}");
    let after = moto.inventory(r, "half");
    assert!(empty(&after), "left behind: {after}");
}

#[test]
fn down_by_tag_finds_everything_when_the_state_is_lost() {
    let Some(moto) = Moto::start("down_by_tag_finds_everything_when_the_state_is_lost") else {
        return;
    };
    let state = Scratch::new("aws-lost");
    let r = "us-east-1";
    let topo = write_topology(
        &state,
        &small_topology("lost", ("t2.micro", 2), ("t2.large", 1)),
    );
    // With SSH open to one operator address: only there, never to the world.
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--yes",
            "--wait",
            "running",
            "--ssh-cidr",
            "203.0.113.7/32",
            "--allow-cidr",
            "198.51.100.0/24",
        ],
    );
    assert_eq!(code, 0, "up failed:\n{out}\n{err}");
    let open = moto.py(
        r,
        r#"
out = sorted([[p.get("FromPort"), c["CidrIp"]] for g in ec2.describe_security_groups(Filters=tagged("lost"))["SecurityGroups"] for p in g["IpPermissions"] for c in p.get("IpRanges", [])], key=str)
"#,
    );
    assert_eq!(
        open,
        serde_json::json!([
            [22, "203.0.113.7/32"],
            [22, "203.0.113.7/32"],
            [443, "198.51.100.0/24"],
            [80, "198.51.100.0/24"]
        ])
    );
    // A lower count in the topology: `up` terminates the surplus and creates nothing.
    let fewer = write_topology(
        &state,
        &small_topology("lost", ("t2.micro", 1), ("t2.large", 1)),
    );
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &fewer,
            "--yes",
            "--wait",
            "running",
            "--ssh-cidr",
            "203.0.113.7/32",
            "--allow-cidr",
            "198.51.100.0/24",
        ],
    );
    assert_eq!(code, 0, "scale-down failed:\n{out}\n{err}");
    assert!(
        out.contains("- terminate") && out.contains("All 3 instances are running"),
        "{out}"
    );
    assert_eq!(
        moto.inventory(r, "lost")["instances"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    std::fs::remove_dir_all(state.0.join("lost")).unwrap();

    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws", "-t", &topo]);
    assert_ne!(
        code, 0,
        "down without state must not pretend:\n{out}\n{err}"
    );
    assert!(err.contains("--by-tag"), "{err}");
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &["down", "--provider", "aws", "-t", &topo, "--by-tag"],
    );
    assert_eq!(code, 0, "down --by-tag failed:\n{out}\n{err}");
    let after = moto.inventory(r, "lost");
    assert!(empty(&after), "left behind: {after}");
}

/// A loopback proxy in front of moto that hands GetMetricData's datapoints back out of time
/// order (the first two of every series swapped), as CloudWatch is allowed to; killed on drop.
struct ShufflingProxy {
    child: Child,
    port: u16,
}

const SHUFFLING_PROXY: &str = r#"
import http.server, re, sys, urllib.request, urllib.error
UPSTREAM, PORT = sys.argv[1], int(sys.argv[2])
def swap_first_two(m):
    items = re.findall(r"<member>(.*?)</member>", m.group(2), re.S)
    if len(items) >= 2:
        items[0], items[1] = items[1], items[0]
    return "<%s>%s</%s>" % (m.group(1), "".join("<member>%s</member>" % i for i in items), m.group(1))
def shuffle(body):
    text = body.decode("utf-8", "replace")
    if "GetMetricDataResponse" not in text:
        return body
    return re.sub(r"<(Timestamps|Values)>(.*?)</\1>", swap_first_two, text, flags=re.S).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.forward()
    def do_POST(self):
        self.forward()
    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        req = urllib.request.Request(UPSTREAM + self.path, data=body, method=self.command, headers=headers)
        try:
            r = urllib.request.urlopen(req)
            status, data, rh = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, data, rh = e.code, e.read(), e.headers
        data = shuffle(data)
        self.send_response(status)
        for k, v in rh.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

impl ShufflingProxy {
    fn start(upstream: &str) -> ShufflingProxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-c", SHUFFLING_PROXY, upstream, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the proxy");
        let proxy = ShufflingProxy { child, port };
        assert!(
            eventually_every(Duration::from_secs(10), Duration::from_millis(50), || {
                TcpStream::connect(("127.0.0.1", proxy.port)).is_ok()
            }),
            "the shuffling proxy did not start"
        );
        proxy
    }
}

impl Drop for ShufflingProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_cloudwatch_source_returns_the_newest_datapoint_per_instance() {
    let Some(moto) = Moto::start("the_cloudwatch_source_returns_the_newest_datapoint_per_instance")
    else {
        return;
    };
    // Datapoints put out of time order, several minutes apart.
    moto.py(
        "us-east-1",
        r#"
import datetime
cw = client("cloudwatch")
now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
def put(instance, minutes_ago, value):
    cw.put_metric_data(Namespace="AWS/EC2", MetricData=[{
        "MetricName": "CPUUtilization", "Unit": "Percent", "Value": value,
        "Dimensions": [{"Name": "InstanceId", "Value": instance}],
        "Timestamp": now - datetime.timedelta(minutes=minutes_ago),
    }])
for m, v in [(3, 30.0), (9, 80.0), (6, 55.0)]:
    put("i-0aaaaaaaaaaaaaaaa", m, v)
for m, v in [(2, 12.5), (4, 99.0), (11, 1.0)]:
    put("i-0bbbbbbbbbbbbbbbb", m, v)
out = True
"#,
    );
    // CloudWatch does not promise time order; the proxy makes sure the answer is out of order.
    let proxy = ShufflingProxy::start(&moto.url());
    let proxied = format!("http://127.0.0.1:{}", proxy.port);
    let seen = moto.py(
        "us-east-1",
        &format!(
            r#"
import datetime, re, urllib.parse, urllib.request
# The Query protocol, as the Rust SDK speaks it (moto does not check signatures).
now = datetime.datetime.now(datetime.timezone.utc)
q = "MetricDataQueries.member.1."
form = {{
    "Action": "GetMetricData", "Version": "2010-08-01", "ScanBy": "TimestampDescending",
    "StartTime": (now - datetime.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "EndTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    q + "Id": "m0", q + "MetricStat.Period": "60", q + "MetricStat.Stat": "Average",
    q + "MetricStat.Metric.Namespace": "AWS/EC2", q + "MetricStat.Metric.MetricName": "CPUUtilization",
    q + "MetricStat.Metric.Dimensions.member.1.Name": "InstanceId",
    q + "MetricStat.Metric.Dimensions.member.1.Value": "i-0aaaaaaaaaaaaaaaa",
}}
req = urllib.request.Request({proxied:?} + "/", data=urllib.parse.urlencode(form).encode(), headers={{
    "Content-Type": "application/x-www-form-urlencoded",
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=0",
}})
xml = urllib.request.urlopen(req).read().decode()
ts = re.findall(r"<member>([^<]*)</member>", re.search(r"<Timestamps>(.*?)</Timestamps>", xml, re.S).group(1))
out = [sorted(ts, reverse=True) == ts, sorted(ts) == ts, len(ts)]
"#
        ),
    );
    assert_eq!(
        seen,
        serde_json::json!([false, false, 3]),
        "the API answers out of order"
    );

    // In-process, with the same environment the binary would have, through the proxy.
    let mut probe = Command::new("true");
    moto.env(&mut probe, "us-east-1");
    probe.env("AWS_ENDPOINT_URL", &proxied);
    for (k, v) in probe.get_envs() {
        match v {
            // SAFETY-free in edition 2021; this test process runs one test (nextest).
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    fulcrum_balancer::install_crypto_provider();
    let source = fulcrum_aws::CloudwatchCpuSource::new(Some("us-east-1".into()));
    let got = fixture::block_on(source.read(vec![
        "i-0aaaaaaaaaaaaaaaa".into(),
        "i-0bbbbbbbbbbbbbbbb".into(),
        "i-0ccccccccccccccccc".into(),
    ]))
    .expect("GetMetricData");
    let now = std::time::SystemTime::now();
    let (a, at_a) = got["i-0aaaaaaaaaaaaaaaa"];
    let (b, at_b) = got["i-0bbbbbbbbbbbbbbbb"];
    assert!((a - 0.30).abs() < 1e-9, "newest of a is 30 %: {got:?}");
    assert!((b - 0.125).abs() < 1e-9, "newest of b is 12.5 %: {got:?}");
    let age = |t: std::time::SystemTime| now.duration_since(t).unwrap().as_secs();
    assert!((120..=300).contains(&age(at_a)), "{}", age(at_a));
    assert!((60..=240).contains(&age(at_b)), "{}", age(at_b));
    assert!(
        !got.contains_key("i-0ccccccccccccccccc"),
        "no data, no reading"
    );
}

/// Where a balancer's admin says each target group's workers are.
fn group_members(admin: &str) -> Vec<(String, Vec<String>)> {
    let s = get(&format!("http://{admin}/status")).json();
    s["target_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let mut w: Vec<String> = g["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            w.sort();
            (g["name"].as_str().unwrap().to_owned(), w)
        })
        .collect()
}

#[test]
fn ec2_discovery_follows_instances_and_up_waits_for_health() {
    let Some(moto) = Moto::start("ec2_discovery_follows_instances_and_up_waits_for_health") else {
        return;
    };
    let state = Scratch::new("aws-disc");
    let r = "us-east-1";
    let text = small_topology("disc", ("t2.micro", 2), ("t2.large", 1));
    let topo = write_topology(&state, &text);
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--yes",
            "--wait",
            "running",
            "--binary-url",
            NO_BINARY,
        ],
    );
    assert_eq!(code, 0, "up failed:\n{out}\n{err}");

    // Each emulator instance gets a real worker on loopback, named by its instance id, and the
    // endpoint tag that says where it answers.
    let listed = moto.py(
        r,
        r#"out = [[i["InstanceId"], tag(i, "fulcrum:role"), tag(i, "fulcrum:cluster")] for i in instances("disc")]"#,
    );
    let mut workers: Vec<(String, Proc)> = Vec::new();
    let mut balancer_id = String::new();
    for i in listed.as_array().unwrap() {
        let id = i[0].as_str().unwrap().to_owned();
        if i[1] == "balancer" {
            balancer_id = id;
            continue;
        }
        let cluster = i[2].as_str().unwrap();
        let w = Proc::start(&[
            "worker",
            "--cluster",
            cluster,
            "--port",
            "0",
            "--instance-id",
            &id,
            "--work-us",
            "0",
        ]);
        workers.push((id, w));
    }
    assert_eq!(workers.len(), 3);
    let tag_endpoint = |id: &str, addr: &str| {
        moto.py(
            r,
            &format!(
                "ec2.create_tags(Resources=[{id:?}], Tags=[{{'Key': 'fulcrum:endpoint', 'Value': {addr:?}}}])\nout = True"
            ),
        );
    };
    for (id, w) in &workers {
        tag_endpoint(id, &w.addr.to_string());
    }

    // The balancer the deployment would run, on loopback, finding its workers by tag.
    let topology = fulcrum_deploy::topology::Topology::parse(&text, "t").unwrap();
    let config = fulcrum_aws::user_data::balancer_config(
        &topology,
        r,
        "127.0.0.1:0",
        "127.0.0.1:0",
        Duration::from_millis(500),
    );
    let config_path = state.path("balancer.toml");
    std::fs::write(&config_path, &config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "balance",
        "--config",
        config_path.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    moto.env(&mut cmd, r);
    let balancer = Proc::start_cmd(cmd);
    let admin = loop {
        let line = balancer
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("the balancer announces its admin address");
        if let Some(a) = line.split("admin on http://").nth(1) {
            break a.trim().to_owned();
        }
    };
    tag_endpoint(&balancer_id, &balancer.addr.to_string());

    let members = |group: &str| {
        group_members(&admin)
            .into_iter()
            .find(|(g, _)| g == group)
            .map(|(_, w)| w)
            .unwrap_or_default()
    };
    assert!(
        eventually_every(Duration::from_secs(20), Duration::from_millis(200), || {
            members("all").len() == 3
        }),
        "the balancer did not discover the workers: {:?}",
        group_members(&admin)
    );
    let mut c1: Vec<String> = workers[..]
        .iter()
        .filter(|(_, w)| get(&w.url("/health")).header("x-fulcrum-cluster") == "1")
        .map(|(_, w)| w.addr.to_string())
        .collect();
    c1.sort();
    assert_eq!(members("cluster1"), c1);

    // `up` again: nothing to create, and it waits until every instance answers.
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--yes",
            "--wait",
            "healthy",
            "--wait-timeout",
            "60s",
            "--binary-url",
            NO_BINARY,
        ],
    );
    assert_eq!(code, 0, "up --wait healthy failed:\n{out}\n{err}");
    assert!(
        out.contains("Nothing to create") && out.contains("answer /health"),
        "{out}"
    );
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &["status", "--provider", "aws", "-t", &topo, "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    for i in status["instances"].as_array().unwrap() {
        assert_eq!(i["health"], "healthy", "{i}");
    }
    assert_eq!(status["balancer_url"], format!("http://{}", balancer.addr));
    // Requests through the balancer reach the discovered workers.
    let reply = get(&balancer.url("/cluster1"));
    assert_eq!(reply.status, 200);

    // A worker joins: an instance launched with the tags (and its endpoint) is picked up.
    let joined = moto.py(
        r,
        r#"
ami = client("ssm").get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")["Parameter"]["Value"]
i = ec2.run_instances(ImageId=ami, InstanceType="t2.micro", MinCount=1, MaxCount=1, TagSpecifications=[{
    "ResourceType": "instance",
    "Tags": [{"Key": "fulcrum:deployment", "Value": "disc"}, {"Key": "fulcrum:role", "Value": "worker"}, {"Key": "fulcrum:cluster", "Value": "1"}],
}])["Instances"][0]
out = i["InstanceId"]
"#,
    );
    let joined = joined.as_str().unwrap().to_owned();
    let w = Proc::start(&[
        "worker",
        "--cluster",
        "1",
        "--port",
        "0",
        "--instance-id",
        &joined,
        "--work-us",
        "0",
    ]);
    let joined_addr = w.addr.to_string();
    tag_endpoint(&joined, &joined_addr);
    workers.push((joined.clone(), w));
    assert!(
        eventually_every(Duration::from_secs(20), Duration::from_millis(200), || {
            members("cluster1").contains(&joined_addr)
        }),
        "the new instance was not discovered: {:?}",
        group_members(&admin)
    );
    assert_eq!(members("cluster1").len(), 3);
    let s = get(&format!("http://{admin}/status")).json();
    let known = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["instance_id"] == joined.as_str());
    assert!(known, "the discovered worker carries its instance id: {s}");

    // A worker leaves: terminated on the emulator, gone from the balancer.
    let leaving = c1[0].clone();
    let leaving_id = workers
        .iter()
        .find(|(_, w)| w.addr.to_string() == leaving)
        .map(|(id, _)| id.clone())
        .unwrap();
    moto.py(
        r,
        &format!("ec2.terminate_instances(InstanceIds=[{leaving_id:?}])\nout = True"),
    );
    assert!(
        eventually_every(Duration::from_secs(20), Duration::from_millis(200), || {
            !members("cluster1").contains(&leaving)
        }),
        "the terminated instance is still a member: {:?}",
        group_members(&admin)
    );
    assert_eq!(members("cluster1").len(), 2);

    drop(balancer);
    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws", "-t", &topo]);
    assert_eq!(code, 0, "down failed:\n{out}\n{err}");
    let after = moto.inventory(r, "disc");
    assert!(empty(&after), "left behind: {after}");
}

#[test]
fn nothing_is_created_without_confirmation_and_an_existing_profile_is_left_alone() {
    let Some(moto) = Moto::start(
        "nothing_is_created_without_confirmation_and_an_existing_profile_is_left_alone",
    ) else {
        return;
    };
    let state = Scratch::new("aws-academy");
    let r = "us-east-1";
    let topo = write_topology(
        &state,
        &small_topology("lab", ("t2.micro", 1), ("t2.large", 1)),
    );
    // No --yes and no terminal: the plan is shown, nothing is applied.
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--binary-url",
            NO_BINARY,
        ],
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("Plan for deployment `lab`") && err.contains("--yes"),
        "{out}\n{err}"
    );
    assert!(
        empty(&moto.inventory(r, "lab")),
        "created without confirmation"
    );

    // AWS Academy: roles cannot be created, the lab's own instance profile is used.
    moto.py(
        r,
        r#"
iam = client("iam")
iam.create_role(RoleName="LabRole", AssumeRolePolicyDocument="{}")
iam.create_instance_profile(InstanceProfileName="LabInstanceProfile")
iam.add_role_to_instance_profile(InstanceProfileName="LabInstanceProfile", RoleName="LabRole")
out = True
"#,
    );
    let (code, out, err) = moto.fulcrum(
        &state.0,
        r,
        &[
            "up",
            "--provider",
            "aws",
            "-t",
            &topo,
            "--yes",
            "--wait",
            "running",
            "--binary-url",
            NO_BINARY,
            "--instance-profile",
            "LabInstanceProfile",
        ],
    );
    assert_eq!(code, 0, "up failed:\n{out}\n{err}");
    let profile = moto.py(
        r,
        r#"out = [i.get("IamInstanceProfile", {}).get("Arn") for i in instances("lab") if tag(i, "fulcrum:role") == "balancer"]"#,
    );
    assert!(
        profile[0]
            .as_str()
            .unwrap()
            .ends_with("/LabInstanceProfile"),
        "{profile}"
    );
    let inv = moto.inventory(r, "lab");
    assert!(
        inv["roles"].as_array().unwrap().is_empty(),
        "no role created: {inv}"
    );
    let (code, out, err) = moto.fulcrum(&state.0, r, &["down", "--provider", "aws", "-t", &topo]);
    assert_eq!(code, 0, "down failed:\n{out}\n{err}");
    assert!(empty(&moto.inventory(r, "lab")));
    let left = moto.py(
        r,
        r#"out = [p["InstanceProfileName"] for p in client("iam").list_instance_profiles()["InstanceProfiles"]]"#,
    );
    assert_eq!(
        left,
        serde_json::json!(["LabInstanceProfile"]),
        "the lab's profile stays"
    );
}
