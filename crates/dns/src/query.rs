//! Answering DNS queries from [`Names`], as Weave's DNS server does (`nameserver/dns.go`):
//!
//! - names in the domain (and single-label names, which get the domain appended): `A` with
//!   every live address, shuffled per answer, authoritative, TTL as configured; `NXDOMAIN`
//!   when the name has no live entry; an empty `NOERROR` answer for any other type of a known
//!   name (RFC 4074: so `AAAA` does not make resolvers give up on the `A`);
//! - `PTR` under `in-addr.arpa.` for an address some entry has; other reverse names go upstream;
//! - everything else is a [`Decision::Forward`] for the driver to send to the upstream servers:
//!   [`Forward`] makes the upstream query, checks the upstream's reply and relays it, or makes
//!   the `SERVFAIL` when every upstream failed.
//!
//! Replies fit the client's size (512 bytes over UDP, or its EDNS size up to 4096; 65535 over
//! TCP): extra answers are cut and the TC bit set, so the client asks again over TCP.
//! Malformed queries get `FORMERR` when their header can be read, nothing otherwise; responses
//! (QR set) are never answered, so two servers cannot be made to talk to each other forever.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use weft_mesh::rng::Rng;

use crate::Names;
use crate::entry::in_domain;

/// Largest UDP reply, whatever the client's EDNS size says (Weave's buffer size).
pub const MAX_UDP: usize = 4096;
/// Smallest UDP size a client must accept.
pub const MIN_UDP: usize = 512;
/// Largest message over TCP.
pub const MAX_TCP: usize = 65535;

/// How the query arrived (decides the reply size limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A TCP stream.
    Tcp,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Decision {
    /// Send these bytes back to the client.
    Reply(Reply),
    /// Ask the upstream servers.
    Forward(Forward),
    /// Send nothing: not a query at all (too short to have a header, or a response).
    Drop,
}

/// A reply made here, and how it came about (for the counters).
#[derive(Debug)]
pub struct Reply {
    /// The message.
    pub bytes: Vec<u8>,
    /// What kind of answer it is.
    pub kind: ReplyKind,
}

/// The kinds of replies made here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// Answered from the names (A, PTR, or an empty answer for another type).
    Answer,
    /// NXDOMAIN for a name in the domain.
    NxDomain,
    /// FORMERR or NOTIMP for a malformed or unsupported query.
    Error,
}

/// A query for the upstream servers.
#[derive(Debug, Clone)]
pub struct Forward {
    raw: Vec<u8>,
    query: Query,
    client_id: u16,
    recursion_desired: bool,
    edns: bool,
    max_size: usize,
}

/// Why an upstream reply was not relayed (the driver tries the next server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The reply does not parse.
    #[error("malformed reply")]
    Malformed,
    /// The reply is for another query (id, question or not a response).
    #[error("reply does not match the query")]
    Mismatch,
}

/// Answers queries for one domain.
#[derive(Debug, Clone)]
pub struct Responder {
    ttl: u32,
}

impl Responder {
    /// A responder giving answers `ttl` seconds to live (the domain is the [`Names`]' one).
    pub fn new(ttl: u32) -> Self {
        Self { ttl }
    }

    /// Decides what to do with the query `bytes` that arrived over `transport`; `seed` drives
    /// the shuffle of the addresses.
    pub fn decide(&self, names: &Names, bytes: &[u8], transport: Transport, seed: u64) -> Decision {
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            return Decision::Drop;
        }
        let Ok(msg) = Message::from_vec(bytes) else {
            return Decision::Reply(header_error(bytes, ResponseCode::FormErr));
        };
        if msg.op_code() != OpCode::Query {
            return Decision::Reply(header_error(bytes, ResponseCode::NotImp));
        }
        let [query] = msg.queries() else {
            return Decision::Reply(header_error(bytes, ResponseCode::FormErr));
        };
        let max_size = match transport {
            Transport::Tcp => MAX_TCP,
            Transport::Udp => usize::from(msg.max_payload()).clamp(MIN_UDP, MAX_UDP),
        };
        let forward = || {
            Decision::Forward(Forward {
                raw: bytes.to_vec(),
                query: query.clone(),
                client_id: msg.id(),
                recursion_desired: msg.recursion_desired(),
                edns: msg.extensions().is_some(),
                max_size,
            })
        };
        if query.query_class() != DNSClass::IN {
            return forward();
        }
        let lower = query.name().to_lowercase().to_ascii();
        let lower = if lower.ends_with('.') {
            lower
        } else {
            format!("{lower}.")
        };
        let local_name = if query.name().num_labels() == 1 {
            Some(format!("{lower}{}", names.domain()))
        } else if lower == names.domain() || in_domain(&lower, names.domain()) {
            Some(lower.clone())
        } else {
            None
        };
        if let Some(name) = local_name {
            return Decision::Reply(self.local(&msg, query, names, &name, max_size, seed));
        }
        if query.query_type() == RecordType::PTR {
            if let Some(addr) = arpa_addr(&lower) {
                if let Some(host) = names.reverse(addr) {
                    if let Ok(target) = Name::from_ascii(host) {
                        let rr = Record::from_rdata(
                            query.name().clone(),
                            self.ttl,
                            RData::PTR(PTR(target)),
                        );
                        let reply = self.reply(&msg, query, ResponseCode::NoError, vec![rr]);
                        return Decision::Reply(Reply {
                            bytes: fit(reply, max_size),
                            kind: ReplyKind::Answer,
                        });
                    }
                }
            }
        }
        forward()
    }

    fn local(
        &self,
        msg: &Message,
        query: &Query,
        names: &Names,
        name: &str,
        max_size: usize,
        seed: u64,
    ) -> Reply {
        let mut addrs = names.lookup(name);
        if addrs.is_empty() {
            let reply = self.reply(msg, query, ResponseCode::NXDomain, Vec::new());
            return Reply {
                bytes: fit(reply, max_size),
                kind: ReplyKind::NxDomain,
            };
        }
        if query.query_type() != RecordType::A {
            addrs.clear();
        }
        shuffle(&mut addrs, seed);
        let answers = addrs
            .into_iter()
            .map(|a| Record::from_rdata(query.name().clone(), self.ttl, RData::A(A(a))))
            .collect();
        let reply = self.reply(msg, query, ResponseCode::NoError, answers);
        Reply {
            bytes: fit(reply, max_size),
            kind: ReplyKind::Answer,
        }
    }

    fn reply(
        &self,
        msg: &Message,
        query: &Query,
        rcode: ResponseCode,
        answers: Vec<Record>,
    ) -> Message {
        let mut r = Message::new();
        r.set_id(msg.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(rcode)
            .add_query(query.clone());
        r.insert_answers(answers);
        if msg.extensions().is_some() {
            r.set_edns(our_edns());
        }
        r
    }
}

impl Forward {
    /// The query to send upstream, under the id `id`.
    pub fn upstream_query(&self, id: u16) -> Vec<u8> {
        let mut q = self.raw.clone();
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// The question asked (for logs).
    pub fn question(&self) -> String {
        format!("{} {}", self.query.name(), self.query.query_type())
    }

    /// The client's reply made from the upstream's `reply` to our query `id`: the upstream's
    /// bytes under the client's id, or, when they do not fit the client's size, an empty
    /// truncated reply (the client asks again over TCP).
    pub fn relay(&self, id: u16, reply: &[u8]) -> Result<Vec<u8>, RelayError> {
        let msg = Message::from_vec(reply).map_err(|_| RelayError::Malformed)?;
        let same_question = match msg.queries() {
            [q] => {
                q.query_type() == self.query.query_type()
                    && q.query_class() == self.query.query_class()
                    && q.name().to_lowercase() == self.query.name().to_lowercase()
            }
            _ => false,
        };
        if msg.id() != id || msg.message_type() != MessageType::Response || !same_question {
            return Err(RelayError::Mismatch);
        }
        if reply.len() <= self.max_size {
            let mut out = reply.to_vec();
            out[..2].copy_from_slice(&self.client_id.to_be_bytes());
            return Ok(out);
        }
        let mut r = Message::new();
        r.set_id(self.client_id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_truncated(true)
            .set_recursion_desired(self.recursion_desired)
            .set_recursion_available(msg.recursion_available())
            .set_response_code(msg.response_code())
            .add_query(self.query.clone());
        if self.edns {
            r.set_edns(our_edns());
        }
        Ok(r.to_vec().unwrap_or_else(|_| servfail_bytes(self)))
    }

    /// `SERVFAIL` for the client: no upstream answered in time.
    pub fn servfail(&self) -> Vec<u8> {
        servfail_bytes(self)
    }
}

/// An `A` query for `name` (made fully qualified) under `id`, recursion desired: what
/// `weft dns-lookup` sends.
pub fn a_query(name: &str, id: u16) -> Result<Vec<u8>, String> {
    let fq = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fq).map_err(|e| format!("'{name}' is not a DNS name: {e}"))?;
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, RecordType::A));
    m.to_vec().map_err(|e| e.to_string())
}

/// The rcode and the `A` addresses of the reply to [`a_query`]'s `id`.
pub fn a_answers(reply: &[u8], id: u16) -> Result<(ResponseCode, Vec<Ipv4Addr>), String> {
    let m = Message::from_vec(reply).map_err(|e| format!("malformed reply: {e}"))?;
    if m.id() != id || m.message_type() != MessageType::Response {
        return Err("the reply is for another query".to_owned());
    }
    let addrs = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Ok((m.response_code(), addrs))
}

fn servfail_bytes(f: &Forward) -> Vec<u8> {
    let mut r = Message::new();
    r.set_id(f.client_id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(f.recursion_desired)
        .set_recursion_available(true)
        .set_response_code(ResponseCode::ServFail)
        .add_query(f.query.clone());
    if f.edns {
        r.set_edns(our_edns());
    }
    // A message of one valid parsed question always encodes; fall back to a bare header.
    r.to_vec().unwrap_or_else(|_| {
        let mut h = f.raw[..12].to_vec();
        set_error_header(&mut h, ResponseCode::ServFail);
        h
    })
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP as u16);
    e
}

/// Encodes `reply`, cutting answers until it fits `max_size` (TC set when any were cut).
fn fit(mut reply: Message, max_size: usize) -> Vec<u8> {
    if let Ok(bytes) = reply.to_vec() {
        if bytes.len() <= max_size {
            return bytes;
        }
    }
    let answers = reply.take_answers();
    // The largest prefix that fits: sizes grow with the count, so search.
    let (mut lo, mut hi) = (0usize, answers.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        reply.insert_answers(answers[..mid].to_vec());
        let fits = reply.to_vec().is_ok_and(|b| b.len() <= max_size);
        reply.take_answers();
        if fits {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    reply.insert_answers(answers[..lo].to_vec());
    reply.set_truncated(lo < answers.len());
    reply.to_vec().unwrap_or_default()
}

/// A reply of just the query's header (no sections) with `rcode`: for queries that do not
/// parse, or ask for something this server does not do.
fn header_error(query: &[u8], rcode: ResponseCode) -> Reply {
    let mut h = query[..12].to_vec();
    set_error_header(&mut h, rcode);
    Reply {
        bytes: h,
        kind: ReplyKind::Error,
    }
}

fn set_error_header(h: &mut [u8], rcode: ResponseCode) {
    // QR set, opcode and RD kept, AA and TC cleared; RA set; rcode; all counts zero.
    h[2] = 0x80 | (h[2] & 0x79);
    h[3] = 0x80 | (rcode.low() & 0x0f);
    h[4..12].fill(0);
}

/// The address of a `d.c.b.a.in-addr.arpa.` name (lowercase, fully qualified).
fn arpa_addr(lower: &str) -> Option<Ipv4Addr> {
    let rest = lower.strip_suffix(".in-addr.arpa.")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for o in octets.iter_mut().rev() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Fisher–Yates with a seeded generator.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests;
