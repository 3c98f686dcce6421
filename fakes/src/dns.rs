//! A fake authoritative DNS server on local UDP: names given at start answer
//! their A and AAAA records, everything else is NXDOMAIN. Tests point a
//! resolver at it to make a name resolve to 10.0.0.1 or 127.0.0.1 without
//! the internet or /etc/hosts.
//!
//! Faithful where resolvers look: the answer echoes the question and the ID,
//! is authoritative, carries an OPT record when the query did (RFC 6891), a
//! known name without records of the asked type is NOERROR with no answers
//! (NODATA), and TTLs are 0 so nothing is cached between lookups.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A running fake DNS server; stops when dropped.
pub struct FakeDns {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeDns {
    /// Starts on a free 127.0.0.1 UDP port in the current tokio runtime.
    /// A name may be given several times (several addresses, both families).
    pub async fn start(records: Vec<(String, IpAddr)>) -> std::io::Result<FakeDns> {
        let mut zone: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in records {
            let mut name = Name::from_ascii(&name).map_err(std::io::Error::other)?;
            name.set_fqdn(true);
            zone.entry(name).or_default().push(ip);
        }
        let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = socket.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(serve(socket, Arc::new(zone), stop.clone()));
        Ok(FakeDns { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve(socket: UdpSocket, zone: Arc<HashMap<Name, Vec<IpAddr>>>, stop: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = tokio::select! {
            () = stop.cancelled() => return,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                // An ICMP error from an earlier reply's peer; keep serving.
                Err(_) => continue,
            },
        };
        let Some(reply) = answer(&buf[..len], &zone) else { continue };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(packet: &[u8], zone: &HashMap<Name, Vec<IpAddr>>) -> Option<Message> {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        // Unparseable: FORMERR if there is at least an ID to answer to.
        Err(_) => {
            let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
            return Some(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.authoritative = true;
    if request.edns.is_some() {
        reply.edns = Some(Edns::new());
    }
    let query = match request.queries.as_slice() {
        [query] => query.clone(),
        _ => {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Some(reply);
        }
    };
    reply.add_query(query.clone());
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return Some(reply);
    }
    if query.query_class() != DNSClass::IN {
        reply.metadata.response_code = ResponseCode::Refused;
        return Some(reply);
    }
    let Some(ips) = zone.get(query.name()) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return Some(reply);
    };
    let wanted = query.query_type();
    for ip in ips {
        let data = match (ip, wanted) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(query.name().clone(), 0, data));
    }
    Some(reply)
}
