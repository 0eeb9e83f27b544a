//! Docker's event stream (`GET /events`): concatenated JSON objects, split as bytes arrive.

use serde_json::Value;

/// Splits a stream of concatenated JSON values (Docker's event stream) into values; returns
/// them and leaves an incomplete tail in `buf`. Garbage is skipped up to the next line.
pub fn split_json_stream(buf: &mut Vec<u8>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut consumed = 0;
    loop {
        let rest = &buf[consumed..];
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        if start == rest.len() {
            consumed = buf.len();
            break;
        }
        let mut it = serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                consumed += start + it.byte_offset();
                out.push(v);
            }
            Some(Err(e)) if e.is_eof() => {
                consumed += start;
                break;
            }
            Some(Err(_)) => {
                // Skip the bad line.
                match rest[start..].iter().position(|&b| b == b'\n') {
                    Some(nl) => consumed += start + nl + 1,
                    None => {
                        consumed = buf.len();
                        break;
                    }
                }
            }
            None => {
                consumed = buf.len();
                break;
            }
        }
    }
    buf.drain(..consumed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_splits_across_chunks() {
        let mut buf = br#"{"Action":"start","id":"a"}
{"Action":"die","#
            .to_vec();
        let got = split_json_stream(&mut buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["Action"], "start");
        buf.extend_from_slice(b"\"id\":\"b\"}\nnot json\n{\"Action\":\"destroy\"}\n");
        let got = split_json_stream(&mut buf);
        let actions: Vec<&str> = got.iter().filter_map(|v| v["Action"].as_str()).collect();
        assert_eq!(actions, ["die", "destroy"]);
        assert!(buf.is_empty());
    }
}
