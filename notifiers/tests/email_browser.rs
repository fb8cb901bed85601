//! One end-to-end run in headless Chromium: open the approval link from the mail, press the button, see the
//! request approved. Driven through chromedriver's WebDriver HTTP API. Without `/usr/bin/chromium` and
//! `chromedriver` it fails (the CI script installs both) unless `COUNTERSIGN_SKIP_BROWSER=1` says to skip.

mod email_support;

use email_support::smtp::FakeSmtp;
use email_support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVERS: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct WebDriver {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
}

impl WebDriver {
    async fn start(driver: &str) -> Self {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage"]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {v}"))
            .to_string();
        Self {
            http,
            base,
            session,
            _driver: child,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

#[tokio::test]
async fn clicking_the_approve_button_in_headless_chromium_approves_the_request() {
    let driver = DRIVERS.iter().find(|d| Path::new(d).exists());
    let (Some(driver), true) = (driver, Path::new(CHROMIUM).exists()) else {
        let why = format!("the headless Chromium test needs {CHROMIUM} and chromedriver: apt-get install chromium chromium-driver (.ci/test does), or set COUNTERSIGN_SKIP_BROWSER=1 to skip it");
        if std::env::var_os("COUNTERSIGN_SKIP_BROWSER").is_some() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        panic!("{why}");
    };
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM browser_test", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (approve, _) = vote_links(&h.base, mail_to(&mails, BOB));

    let wd = WebDriver::start(driver).await;
    // Every browser step runs before any assertion, so a failure still ends the browser session.
    let (nav, opened, status_after_get, button) = {
        let nav = wd
            .cmd(reqwest::Method::POST, "/url", json!({ "url": approve }))
            .await;
        let opened = wd.source().await;
        let status_after_get = h.status(id).await;
        let button = wd
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": "#confirm" }),
            )
            .await;
        (nav, opened, status_after_get, button)
    };
    let mut result = String::new();
    if let Some(el) = button[ELEMENT_KEY].as_str() {
        wd.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            json!({}),
        )
        .await;
        for _ in 0..50 {
            result = wd.source().await;
            if result.contains("Vote recorded") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wd.quit().await;

    assert!(
        opened.contains("You are voting as <strong>bob@example.com</strong>"),
        "navigation: {nav}\npage: {opened}"
    );
    assert_eq!(
        status_after_get, "pending",
        "opening the page decides nothing"
    );
    assert!(button[ELEMENT_KEY].is_string(), "confirm button: {button}");
    assert!(result.contains("Vote recorded"), "{result}");
    assert_eq!(h.status(id).await, "approved");
    assert_eq!(h.workflow.get(id).await.unwrap().votes[0].voter_name, BOB);
}
