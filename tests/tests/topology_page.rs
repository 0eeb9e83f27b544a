//! Integration test (root, network namespaces, Debian's headless Chromium): the topology page
//! on `GET /` (issue 15).
//!
//! Three hosts in a full mesh, a container on each with an address from IPAM (so the ring is
//! shared), weaveDNS names on two of them, and traffic between two containers. Chromium, driven
//! by ChromeDriver inside host 1's namespace, loads `http://127.0.0.1:6784/` as a person on
//! host 1 would, and the test checks, as that person would see it:
//! - the response is HTML whose Content-Security-Policy allows nothing from elsewhere;
//! - the drawing has the three peers (this one marked local) and the three links, all
//!   `established` over `fastdp` (the kernel fast path; its devices' counters give the rates); each peer shows its IPAM share (shares adding up to 100 %)
//!   and its DNS entry count; host 1's links show traffic rates, non-zero on the busy one;
//! - every peer is drawn inside the window, and the screenshot (a PNG of the window's size,
//!   kept as `topology.png` in the test dir, or in `$WEFT_TEST_SCREENSHOT_DIR`) shows them;
//! - cutting the link between hosts 2 and 3 (underlay blocked both ways, the control
//!   connection reset) changes the picture within 5 s: that link is no longer drawn as
//!   established, while the three peers and host 1's two links stay.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::browser::{Browser, png_size};
use weft_tests::mesh::{block_underlay, launch_with};
use weft_tests::{Host, run_test, wait_established, wait_until};

const READ_DOM: &str = r#"
const peers = [...document.querySelectorAll('#graph .peer')].map(e => {
  const r = e.querySelector('circle.body').getBoundingClientRect();
  return { name: e.dataset.name, nickname: e.dataset.nickname, local: e.classList.contains('local'),
           ipam: e.dataset.ipamPercent, dns: Number(e.dataset.dns),
           box: [r.left, r.top, r.right, r.bottom] };
});
const links = [...document.querySelectorAll('#graph .link')].map(e => ({
  a: e.dataset.a, b: e.dataset.b, state: e.dataset.state, overlay: e.dataset.overlay,
  rate: (e.querySelector('.rate') || {}).textContent || '' }));
return { peers, links, polls: Number(document.getElementById('updated').dataset.polls),
         pageError: document.getElementById('error').textContent,
         viewport: [window.innerWidth, window.innerHeight] };
"#;

fn link_between<'a>(dom: &'a Value, a: &str, b: &str) -> Option<&'a Value> {
    dom["links"]
        .as_array()?
        .iter()
        .find(|l| (l["a"] == a && l["b"] == b) || (l["a"] == b && l["b"] == a))
}

/// Resets the control connections between `a` and `b` (both sides), as a broken path would
/// once noticed.
fn reset_connections(a: &Host, b: &Host) -> Result<()> {
    for (h, other) in [(a, b), (b, a)] {
        h.exec(&["ss", "-K", "dst", &other.addr().to_string()])?
            .ok()
            .with_context(|| format!("ss -K on host {}", h.n()))?;
    }
    Ok(())
}

#[test]
fn the_page_draws_the_mesh_and_follows_a_cut_link() {
    run_test("topo", |net| {
        weft_tests::browser::require_chromium()?;
        let hosts = [net.host(1)?, net.host(2)?, net.host(3)?];
        let [h1, h2, h3] = &hosts;
        launch_with(h1, &[], &[])?;
        launch_with(h2, &[], &[h1])?;
        launch_with(h3, &[], &[h1, h2])?;
        wait_established(&[h1, h2, h3], Duration::from_secs(30))?;
        let mut ctrs = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            ctrs.push(h.container_alloc(&format!("c{}", i + 1), &["net:default"])?);
        }
        h1.weft_ok(&[
            "dns-add",
            &ctrs[0].ip().to_string(),
            "-h",
            "alpha.weave.local",
        ])?;
        h1.weft_ok(&[
            "dns-add",
            &ctrs[0].ip().to_string(),
            "-h",
            "beta.weave.local",
        ])?;
        h2.weft_ok(&[
            "dns-add",
            &ctrs[1].ip().to_string(),
            "-h",
            "gamma.weave.local",
        ])?;
        ctrs[0].wait_ping(ctrs[1].ip(), Duration::from_secs(20))?;
        // Steady traffic on host 1's link to host 2 while the page looks.
        let pinger = weft_tests::Cmd::new("ip")
            .args([
                "netns",
                "exec",
                ctrs[0].ns(),
                "ping",
                "-q",
                "-i",
                "0.05",
                "-s",
                "1200",
            ])
            .arg(ctrs[1].ip().to_string())
            .spawn_to(&net.dir().join("ping.out"), &net.dir().join("ping.err"))?;
        let _pinger = KillOnDrop(pinger);

        let head = h1
            .exec(&[
                "curl",
                "-sS",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "http://127.0.0.1:6784/",
            ])?
            .ok()?
            .stdout
            .to_ascii_lowercase();
        ensure!(head.contains("content-type: text/html"), "{head}");
        ensure!(
            head.contains("content-security-policy: default-src 'none'; connect-src 'self'"),
            "{head}"
        );

        let dir = net.dir().join("browser");
        std::fs::create_dir_all(&dir)?;
        let b = Browser::start(h1, &dir, 1400, 900)?;
        b.goto("http://127.0.0.1:6784/")?;
        let names: Vec<String> = hosts.iter().map(Host::peer_name).collect::<Result<_>>()?;
        let dom = wait_until(
            "the page to show 3 peers, 3 established links and rates",
            Duration::from_secs(20),
            Duration::from_millis(250),
            || {
                let dom = b.eval(READ_DOM)?;
                let peers = dom["peers"].as_array().map_or(0, Vec::len);
                let est = dom["links"].as_array().map_or(0, |l| {
                    l.iter().filter(|l| l["state"] == "established").count()
                });
                let busy = link_between(&dom, &names[0], &names[1])
                    .and_then(|l| l["rate"].as_str())
                    .is_some_and(|r| r.starts_with('↑') && !r.starts_with("↑ 0 B/s"));
                if peers == 3 && est == 3 && busy && dom["polls"].as_u64() >= Some(3) {
                    Ok(dom)
                } else {
                    bail!("{dom}")
                }
            },
        )?;
        eprintln!("page: {dom:#}");
        let peers = dom["peers"].as_array().context("peers")?;
        let mut share = 0.0;
        for (i, name) in names.iter().enumerate() {
            let p = peers
                .iter()
                .find(|p| p["name"] == name.as_str())
                .with_context(|| format!("host {} ({name}) not drawn", i + 1))?;
            ensure!(p["nickname"] == format!("host{}", i + 1), "{p}");
            ensure!(p["local"] == (i == 0), "{p}");
            let pct: f64 = p["ipam"].as_str().unwrap_or("").parse().unwrap_or(-1.0);
            ensure!(pct > 0.0, "host {} shows no IPAM share: {p}", i + 1);
            share += pct;
            let want_dns = [2, 1, 0][i];
            ensure!(p["dns"] == want_dns, "host {} DNS count: {p}", i + 1);
            let [l, t, r, bt] = [0, 1, 2, 3].map(|k| p["box"][k].as_f64().unwrap_or(-1.0));
            let [w, h] = [0, 1].map(|k| dom["viewport"][k].as_f64().unwrap_or(0.0));
            ensure!(
                l >= 0.0 && t >= 0.0 && r <= w && bt <= h && r > l,
                "host {} is drawn outside the window: {p}",
                i + 1
            );
        }
        ensure!((share - 100.0).abs() < 0.5, "IPAM shares add up to {share}");
        for l in dom["links"].as_array().context("links")? {
            if l["a"] == names[0].as_str() || l["b"] == names[0].as_str() {
                ensure!(l["overlay"] == "fastdp", "{l}");
                ensure!(l["rate"].as_str().is_some_and(|r| r.contains('↓')), "{l}");
            }
        }
        let shot_dir = std::env::var_os("WEFT_TEST_SCREENSHOT_DIR")
            .map_or_else(|| net.dir().to_path_buf(), Into::into);
        let png = b.screenshot(&shot_dir.join("topology.png"))?;
        let viewport = [0, 1].map(|k| dom["viewport"][k].as_u64().unwrap_or(0) as u32);
        ensure!(
            png_size(&png)? == (viewport[0], viewport[1]),
            "screenshot size {:?}, window {viewport:?}",
            png_size(&png)?
        );
        ensure!(
            png.len() > 20_000,
            "the screenshot is nearly empty ({} bytes)",
            png.len()
        );

        // Cut host 2 <-> host 3.
        block_underlay(h2, h3)?;
        reset_connections(h2, h3)?;
        let cut = Instant::now();
        let after = wait_until(
            "the page to stop showing host 2 <-> host 3 as established",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let dom = b.eval(READ_DOM)?;
                match link_between(&dom, &names[1], &names[2]) {
                    Some(l) if l["state"] == "established" => bail!("still {l}"),
                    _ => Ok(dom),
                }
            },
        )?;
        let took = cut.elapsed();
        eprintln!("the cut showed after {took:.1?}");
        ensure!(took <= Duration::from_secs(5));
        ensure!(
            after["peers"].as_array().map_or(0, Vec::len) == 3,
            "{after}"
        );
        for other in [&names[1], &names[2]] {
            let l = link_between(&after, &names[0], other).context("host 1's link gone")?;
            ensure!(l["state"] == "established", "{l}");
        }
        b.screenshot(&shot_dir.join("topology-cut.png"))?;
        Ok(())
    });
}

/// Kills a background command when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
