//! The JSON edits the proxy makes to Docker API bodies, as pure functions over
//! `serde_json::Value` (never round-tripped through typed structs, so fields this code does not
//! know survive untouched).
//!
//! - [`decide`]: does a `containers/create` body join the weave network, with which addresses?
//! - [`rewrite_create`]: bind-mount the waiter and put it in front of the entrypoint.
//! - [`rewrite_exec`]: put the waiter in front of an exec's command.
//! - [`rewrite_inspect`]: show the weave address in `NetworkSettings`.

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use weft_ipam::spec::{AddrSpec, parse_specs};
use weft_wire::ethernet::Address;

/// Path of the waiter inside a joined container.
pub const WAITER: &str = "/w/w";
/// Where the waiter's directory is mounted in a joined container.
pub const WAITER_MOUNT: &str = "/w";
/// The waiter of a container joined without the multicast route (`--no-multicast-route`):
/// the same binary, mounted elsewhere; it then waits for `ethwe`'s addresses instead.
pub const WAITER_NOMCAST: &str = "/w-nomcast/w";
/// Where the waiter's directory is mounted for [`WAITER_NOMCAST`].
pub const WAITER_NOMCAST_MOUNT: &str = "/w-nomcast";

/// The waiter path and its mount point: [`WAITER`] normally, [`WAITER_NOMCAST`] when
/// containers get no multicast route.
pub fn waiter(multicast_route: bool) -> (&'static str, &'static str) {
    if multicast_route {
        (WAITER, WAITER_MOUNT)
    } else {
        (WAITER_NOMCAST, WAITER_NOMCAST_MOUNT)
    }
}

/// The value of `name` in a Docker `Env` list (`["K=V", ...]`).
pub fn env_value<'a>(env: &'a Value, name: &str) -> Option<&'a str> {
    env.as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
}

/// Whether a network mode leaves the container to us: Docker's default network, `bridge` and
/// `none` do; `host`, `container:X` and named networks (`--net=weave` plugins among them) do not.
fn joinable_network_mode(mode: Option<&str>) -> bool {
    matches!(mode, None | Some("" | "default" | "bridge" | "none"))
}

/// Decides from a create body (or an inspected container's `Config` + `HostConfig`, see
/// [`decide_inspected`]) whether the container joins, and with which address specs.
/// `Err` is a message for the user about a bad `WEAVE_CIDR`.
fn decide_from(
    env: &Value,
    network_mode: Option<&str>,
    no_default_ipalloc: bool,
) -> Result<Option<Vec<AddrSpec>>, String> {
    if !joinable_network_mode(network_mode) {
        return Ok(None);
    }
    match env_value(env, "WEAVE_CIDR") {
        Some(v) if v.trim() == "none" => Ok(None),
        Some(v) => {
            let mut specs = parse_specs(v).map_err(|e| format!("WEAVE_CIDR={v}: {e:#}"))?;
            if specs.is_empty() {
                specs.push(AddrSpec::DefaultSubnet);
            }
            Ok(Some(specs))
        }
        None if no_default_ipalloc => Ok(None),
        None => Ok(Some(vec![AddrSpec::DefaultSubnet])),
    }
}

/// Does a `POST /containers/create` body join, and with which address specs? `Err` is a
/// message for the user about a bad `WEAVE_CIDR`.
pub fn decide(body: &Value, no_default_ipalloc: bool) -> Result<Option<Vec<AddrSpec>>, String> {
    decide_from(
        &body["Env"],
        body["HostConfig"]["NetworkMode"].as_str(),
        no_default_ipalloc,
    )
}

/// [`decide`] for a `GET /containers/{id}/json` answer; only containers created through
/// the proxy (their process is the waiter) are joined.
pub fn decide_inspected(
    inspect: &Value,
    no_default_ipalloc: bool,
) -> Result<Option<Vec<AddrSpec>>, String> {
    if !is_joined(inspect) {
        return Ok(None);
    }
    decide_from(
        &inspect["Config"]["Env"],
        inspect["HostConfig"]["NetworkMode"].as_str(),
        no_default_ipalloc,
    )
}

/// Whether an inspected container was set up by the proxy (its process is the waiter).
pub fn is_joined(inspect: &Value) -> bool {
    waiter_of(inspect).is_some()
}

/// The waiter an inspected container runs ([`WAITER`] or [`WAITER_NOMCAST`]), if any.
pub fn waiter_of(inspect: &Value) -> Option<&'static str> {
    let first = strings(&inspect["Config"]["Entrypoint"]).into_iter().next();
    [WAITER, WAITER_NOMCAST]
        .into_iter()
        .find(|w| inspect["Path"].as_str() == Some(w) || first.as_deref() == Some(w))
}

/// A Docker string list (`null`, `"a b"` from old clients, or `["a", "b"]`).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether [`rewrite_create`] needs the image's `Config` (the request has no entrypoint).
pub fn needs_image(body: &Value) -> bool {
    strings(&body["Entrypoint"]).is_empty()
}

/// Rewrites a joining container's create body: the waiter directory `waiter_dir` bind-mounted
/// read-only at `/w`, and `/w/w` in front of the entrypoint. When the request has no entrypoint
/// the image's (`image_config`, the `Config` of `GET /images/{name}/json`) is made explicit,
/// with the image's command unless the request gives one, as Docker itself would combine them.
pub fn rewrite_create(
    body: &mut Value,
    image_config: Option<&Value>,
    waiter_dir: &str,
) -> Result<(), String> {
    rewrite_create_with(body, image_config, waiter_dir, true)
}

/// [`rewrite_create`], with the waiter of [`waiter`]`(multicast_route)`.
pub fn rewrite_create_with(
    body: &mut Value,
    image_config: Option<&Value>,
    waiter_dir: &str,
    multicast_route: bool,
) -> Result<(), String> {
    let (waiter_path, mount) = waiter(multicast_route);
    if !body.is_object() {
        return Err("the create body is not a JSON object".to_owned());
    }
    let mut entrypoint = strings(&body["Entrypoint"]);
    let mut cmd = strings(&body["Cmd"]);
    if entrypoint.first().map(String::as_str) != Some(waiter_path) {
        if entrypoint.is_empty() {
            if let Some(image) = image_config {
                entrypoint = strings(&image["Entrypoint"]);
                if cmd.is_empty() {
                    cmd = strings(&image["Cmd"]);
                }
            }
        }
        if entrypoint.is_empty() && cmd.is_empty() {
            return Err("No command specified".to_owned());
        }
        entrypoint.insert(0, waiter_path.to_owned());
        body["Entrypoint"] = json!(entrypoint);
        body["Cmd"] = if cmd.is_empty() {
            Value::Null
        } else {
            json!(cmd)
        };
    }
    if !body["HostConfig"].is_object() {
        body["HostConfig"] = json!({});
    }
    let bind = format!("{waiter_dir}:{mount}:ro");
    let binds = &mut body["HostConfig"]["Binds"];
    if !binds.is_array() {
        *binds = json!([]);
    }
    if let Some(list) = binds.as_array_mut() {
        if !list.iter().any(|b| b.as_str() == Some(bind.as_str())) {
            list.push(Value::String(bind));
        }
    }
    Ok(())
}

/// Puts the waiter in front of an exec's command, so `docker exec` also waits for the network.
pub fn rewrite_exec(body: &mut Value) {
    rewrite_exec_with(body, WAITER);
}

/// [`rewrite_exec`] with the container's own waiter path (see [`waiter_of`]).
pub fn rewrite_exec_with(body: &mut Value, waiter_path: &str) {
    if !body.is_object() {
        return;
    }
    let mut cmd = strings(&body["Cmd"]);
    if cmd.is_empty() || cmd[0] == waiter_path {
        return;
    }
    cmd.insert(0, waiter_path.to_owned());
    body["Cmd"] = json!(cmd);
}

/// Shows the first weave address in an inspect answer (`--rewrite-inspect`); anything but a
/// JSON object is left as it is.
pub fn rewrite_inspect(inspect: &mut Value, addr: Ipv4Net, mac: [u8; 6]) {
    if !inspect.is_object() {
        return;
    }
    if !inspect["NetworkSettings"].is_object() {
        inspect["NetworkSettings"] = json!({});
    }
    let ns = &mut inspect["NetworkSettings"];
    ns["IPAddress"] = json!(addr.addr().to_string());
    ns["IPPrefixLen"] = json!(addr.prefix_len());
    ns["MacAddress"] = json!(Address::from(mac).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(env: &[&str], mode: &str) -> Value {
        json!({"Image": "bb", "Env": env, "Cmd": ["httpd", "-f"], "Entrypoint": null,
               "HostConfig": {"NetworkMode": mode, "Binds": null}, "SomeFutureField": {"x": 1}})
    }

    #[test]
    fn who_joins() {
        let sub: Ipv4Net = "10.32.1.0/24".parse().unwrap();
        let with = create(&["A=1", "WEAVE_CIDR=net:10.32.1.0/24"], "default");
        assert_eq!(decide(&with, true), Ok(Some(vec![AddrSpec::Subnet(sub)])));
        let plain = create(&["A=1"], "default");
        assert_eq!(decide(&plain, true), Ok(None));
        assert_eq!(
            decide(&plain, false),
            Ok(Some(vec![AddrSpec::DefaultSubnet]))
        );
        // An empty WEAVE_CIDR means the default allocation even with --no-default-ipalloc.
        let empty = create(&["WEAVE_CIDR="], "");
        assert_eq!(
            decide(&empty, true),
            Ok(Some(vec![AddrSpec::DefaultSubnet]))
        );
        assert_eq!(
            decide(&create(&["WEAVE_CIDR=none"], "bridge"), false),
            Ok(None)
        );
        for mode in ["host", "container:abc", "weave", "mynet"] {
            assert_eq!(
                decide(&create(&["WEAVE_CIDR=net:default"], mode), false),
                Ok(None)
            );
        }
        let two = create(&["WEAVE_CIDR=net:default 10.2.1.1/24"], "none");
        assert_eq!(
            decide(&two, true),
            Ok(Some(vec![
                AddrSpec::DefaultSubnet,
                AddrSpec::Address("10.2.1.1/24".parse().unwrap())
            ]))
        );
    }

    #[test]
    fn bad_weave_cidr_says_what_is_wrong() {
        let bare = decide(&create(&["WEAVE_CIDR=10.32.1.5"], ""), true).unwrap_err();
        assert!(bare.contains("no prefix length"), "{bare}");
        let junk = decide(&create(&["WEAVE_CIDR=net:default bogus"], ""), true).unwrap_err();
        assert!(junk.contains("'bogus'"), "{junk}");
    }

    #[test]
    fn create_gets_the_waiter_and_keeps_unknown_fields() {
        let mut body = create(&["WEAVE_CIDR=net:default"], "default");
        let image = json!({"Entrypoint": ["/entry"], "Cmd": ["default-cmd"]});
        assert!(needs_image(&body));
        rewrite_create(&mut body, Some(&image), "/var/lib/weft/waiter").unwrap();
        assert_eq!(body["Entrypoint"], json!(["/w/w", "/entry"]));
        // The request's command wins over the image's, as in Docker.
        assert_eq!(body["Cmd"], json!(["httpd", "-f"]));
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!(["/var/lib/weft/waiter:/w:ro"])
        );
        assert_eq!(body["SomeFutureField"], json!({"x": 1}));
        assert_eq!(body["HostConfig"]["NetworkMode"], json!("default"));
        // A second pass (a client retrying) changes nothing.
        let before = body.clone();
        rewrite_create(&mut body, Some(&image), "/var/lib/weft/waiter").unwrap();
        assert_eq!(body, before);
    }

    #[test]
    fn image_command_is_used_when_the_request_has_none() {
        let mut body = json!({"Image": "bb", "Cmd": null, "Entrypoint": null,
                              "HostConfig": {"Binds": ["/a:/b"]}});
        let image = json!({"Entrypoint": null, "Cmd": ["/bin/sh"]});
        rewrite_create(&mut body, Some(&image), "/wd").unwrap();
        assert_eq!(body["Entrypoint"], json!(["/w/w"]));
        assert_eq!(body["Cmd"], json!(["/bin/sh"]));
        assert_eq!(body["HostConfig"]["Binds"], json!(["/a:/b", "/wd:/w:ro"]));
        // An explicit entrypoint drops the image's command, as Docker does.
        let mut body =
            json!({"Image": "bb", "Cmd": null, "Entrypoint": ["/x"], "HostConfig": null});
        assert!(!needs_image(&body));
        rewrite_create(&mut body, None, "/wd").unwrap();
        assert_eq!(body["Entrypoint"], json!(["/w/w", "/x"]));
        assert_eq!(body["Cmd"], Value::Null);
        let mut nothing = json!({"Image": "bb"});
        let err = rewrite_create(&mut nothing, Some(&json!({})), "/wd").unwrap_err();
        assert_eq!(err, "No command specified");
    }

    #[test]
    fn exec_and_inspect() {
        let mut exec = json!({"Cmd": ["ip", "addr"], "AttachStdout": true});
        rewrite_exec(&mut exec);
        assert_eq!(exec["Cmd"], json!(["/w/w", "ip", "addr"]));
        rewrite_exec(&mut exec);
        assert_eq!(exec["Cmd"], json!(["/w/w", "ip", "addr"]));
        let mut inspect = json!({"Path": "/w/w", "Config": {"Env": ["WEAVE_CIDR=net:default"]},
                                 "NetworkSettings": {"IPAddress": "", "Ports": {}}});
        assert!(is_joined(&inspect));
        assert_eq!(
            decide_inspected(&inspect, true),
            Ok(Some(vec![AddrSpec::DefaultSubnet]))
        );
        rewrite_inspect(
            &mut inspect,
            "10.32.1.3/24".parse().unwrap(),
            [2, 0, 0, 0, 0, 0xab],
        );
        assert_eq!(inspect["NetworkSettings"]["IPAddress"], json!("10.32.1.3"));
        assert_eq!(inspect["NetworkSettings"]["IPPrefixLen"], json!(24));
        assert_eq!(
            inspect["NetworkSettings"]["MacAddress"],
            json!("02:00:00:00:00:ab")
        );
        assert_eq!(inspect["NetworkSettings"]["Ports"], json!({}));
        // Bodies that are not objects are left alone, never a panic.
        for mut odd in [json!("text"), json!([1, 2]), json!(null), json!(3)] {
            let before = odd.clone();
            rewrite_exec(&mut odd);
            rewrite_inspect(&mut odd, "10.32.1.3/24".parse().unwrap(), [2; 6]);
            assert_eq!(odd, before);
            assert!(rewrite_create(&mut odd, None, "/wd").is_err());
        }
        let other = json!({"Path": "httpd", "Config": {"Entrypoint": null}});
        assert!(!is_joined(&other));
        let mut nomcast = create(&["WEAVE_CIDR=net:default"], "default");
        rewrite_create_with(&mut nomcast, Some(&json!({"Cmd": ["sh"]})), "/wd", false).unwrap();
        assert_eq!(nomcast["Entrypoint"], json!(["/w-nomcast/w"]));
        assert_eq!(nomcast["HostConfig"]["Binds"], json!(["/wd:/w-nomcast:ro"]));
        let inspected = json!({"Path": "/w-nomcast/w", "Config": {"Entrypoint": ["/w-nomcast/w"]}});
        assert_eq!(waiter_of(&inspected), Some(WAITER_NOMCAST));
        let mut e = json!({"Cmd": ["ls"]});
        rewrite_exec_with(&mut e, WAITER_NOMCAST);
        assert_eq!(e["Cmd"], json!(["/w-nomcast/w", "ls"]));
        assert_eq!(decide_inspected(&other, false), Ok(None));
    }
}
