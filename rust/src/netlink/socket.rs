//! The NETLINK_NETFILTER socket: sends a batch and collects the kernel's error reports,
//! and dumps objects back.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{
    align4, attributes, patch_len, push_attr, push_header, BatchError, MessageTag, NFGENMSG_LEN,
    NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN, NFT_MSG_NEWGEN, NLMSG_HDRLEN, NLM_F_DUMP, NLM_F_REQUEST,
};

/// Set on a dump's messages when the ruleset changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
/// NLMSGERR_ATTR_MSG: not in libc.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NFTA_GEN_ID: u16 = 1;

/// A netlink socket bound to NETLINK_NETFILTER in the caller's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is open; the option value is a plain int that outlives the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Kernel error reports are small; this holds thousands of them.
const RECEIVE_BUFFER: usize = 8 << 20;
/// How long a read waits for the kernel before giving up.
const RECEIVE_TIMEOUT_SECONDS: libc::time_t = 120;

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })?;
        // SAFETY: raw is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; zeroed means "kernel assigns the port".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl for the duration of the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        // Errors then echo only the failing message's header, and come with the
        // kernel's explanation when it has one.
        set_int_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        set_int_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)?;
        Self::size_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECEIVE_BUFFER)?;
        // A safety net: the kernel answers within a commit's time, never minutes.
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT_SECONDS,
            tv_usec: 0,
        };
        // SAFETY: fd is open; timeout is a valid timeval for the duration of the call.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket { fd, seq })
    }

    /// Sets a socket buffer size; the FORCE variant (root) lifts the sysctl ceiling.
    fn size_buffer(
        fd: &OwnedFd,
        force: libc::c_int,
        plain: libc::c_int,
        bytes: usize,
    ) -> io::Result<()> {
        let value = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        set_int_option(fd, libc::SOL_SOCKET, force, value)
            .or_else(|_| set_int_option(fd, libc::SOL_SOCKET, plain, value))
    }

    /// The sequence number the next batch should start at.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    fn reserve_seq(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends a finished batch and returns every error the kernel reported, in batch order
    /// (none: committed). The kernel applies a batch all or nothing, so any error means
    /// nothing changed; it goes on checking the messages after a failed one, so one batch
    /// names every message it refuses.
    pub fn send_batch(
        &mut self,
        wire: &[u8],
        tags: &[MessageTag],
        first_seq: u32,
    ) -> io::Result<Vec<BatchError>> {
        // One batch must travel in one skb; the send buffer has to hold all of it.
        Self::size_buffer(
            &self.fd,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            wire.len() + 4096,
        )?;
        self.seq = first_seq.wrapping_add(tags.len() as u32 + 2);
        self.send_all(wire)?;
        let mut errors = Vec::new();
        let overflowed = self.await_generation(
            &mut |seq, errno, message| {
                // Message i carries first_seq + 1 + i; BATCH_BEGIN (a commit failure) is 0.
                let offset = seq.wrapping_sub(first_seq) as usize;
                if errno == 0 || offset > tags.len() + 1 {
                    return;
                }
                let tag = offset.checked_sub(1).and_then(|i| tags.get(i).copied());
                errors.push(BatchError {
                    errno,
                    tag,
                    message,
                });
            },
            &mut |_| {},
        )?;
        if overflowed {
            // Error reports were dropped: something failed that the kernel could not name.
            errors.push(BatchError {
                errno: libc::ENOBUFS,
                tag: None,
                message: Some("error reports overflowed the receive buffer".into()),
            });
        }
        Ok(errors)
    }

    fn send_all(&self, wire: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed addresses the kernel (port 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: wire and kernel stay valid for the call; netlink sends whole messages.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    wire.as_ptr().cast(),
                    wire.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Sends one nf_tables request with string attributes; returns its sequence number.
    fn send_request(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> io::Result<u32> {
        let seq = self.reserve_seq(1);
        let mut buf = Vec::with_capacity(64);
        push_header(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
        );
        for (kind, value) in attrs {
            push_attr(&mut buf, *kind, &[value.as_bytes(), &[0]]);
        }
        patch_len(&mut buf, 0);
        self.send_all(&buf)?;
        Ok(seq)
    }

    fn send_getgen(&mut self) -> io::Result<u32> {
        self.send_request(NFT_MSG_GETGEN, 0, libc::AF_UNSPEC as u8, &[])
    }

    /// Dumps the nf_tables objects a GET request of type `msg` selects (its attributes
    /// filter, for example by table) and returns each answer's payload: nfgenmsg and
    /// attributes. A dump the kernel marks as interrupted by a concurrent change is asked
    /// again, so the result is one generation's view. An error report ends the dump as the
    /// `io::Error` of its errno.
    pub fn dump(
        &mut self,
        msg: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> io::Result<Vec<Vec<u8>>> {
        loop {
            let seq = self.send_request(msg, NLM_F_DUMP, family, attrs)?;
            let mut answers = Vec::new();
            let mut interrupted = false;
            let mut buf = vec![0u8; 1 << 16];
            'receive: loop {
                let got = self.recv(&mut buf, 0)?;
                for (msg_type, flags, msg_seq, payload) in messages(&buf[..got])? {
                    if msg_seq != seq {
                        continue;
                    }
                    interrupted |= flags & NLM_F_DUMP_INTR != 0;
                    match msg_type {
                        // Its payload is the dump's status: 0, or an errno that cut it short.
                        NLMSG_DONE => {
                            let status = payload
                                .get(..4)
                                .map_or(0, |s| i32::from_ne_bytes(s.try_into().unwrap()));
                            if status < 0 {
                                return Err(io::Error::from_raw_os_error(-status));
                            }
                            break 'receive;
                        }
                        NLMSG_ERROR => {
                            let (errno, _, _) = parse_error(payload)?;
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                        _ => answers.push(payload.to_vec()),
                    }
                }
            }
            if !interrupted {
                return Ok(answers);
            }
        }
    }

    /// One `recv`, retried on EINTR; a timeout becomes an error that says so.
    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: buf is writable for its whole length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if got >= 0 {
                return Ok(got as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if flags & libc::MSG_DONTWAIT == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel in {RECEIVE_TIMEOUT_SECONDS} s"),
                    ))
                }
                _ => return Err(err),
            }
        }
    }

    /// The ruleset generation id: it changes with every committed transaction.
    pub fn generation(&mut self) -> io::Result<u32> {
        let mut generation = None;
        self.await_generation(&mut |_, _, _| {}, &mut |payload| {
            generation = parse_gen_id(payload);
        })?;
        generation.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "NEWGEN without a generation id")
        })
    }

    /// Asks for the generation and reads until the answer, passing every error report on
    /// the way to `on_error`. Everything queued before the question arrives before its
    /// answer. When reports overflowed the receive buffer the answer may have been dropped
    /// with them, so the queue is drained and the question asked again. Returns whether
    /// anything was dropped.
    fn await_generation(
        &mut self,
        on_error: &mut dyn FnMut(u32, i32, Option<String>),
        on_generation: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        let mut overflowed = false;
        loop {
            let gen_seq = self.send_getgen()?;
            match self.read(0, Some(gen_seq), on_error, on_generation)? {
                ReadOutcome::Answered => return Ok(overflowed),
                ReadOutcome::Overflowed => {
                    overflowed = true;
                    while self.read(libc::MSG_DONTWAIT, None, on_error, &mut |_| {})?
                        != ReadOutcome::Empty
                    {}
                }
                ReadOutcome::Empty => unreachable!("a blocking read ends with an answer"),
            }
        }
    }

    /// Reads messages until the NEWGEN answering `answer_to`, an overflow, or (with
    /// MSG_DONTWAIT) an empty queue.
    fn read(
        &mut self,
        flags: libc::c_int,
        answer_to: Option<u32>,
        on_error: &mut dyn FnMut(u32, i32, Option<String>),
        on_generation: &mut dyn FnMut(&[u8]),
    ) -> io::Result<ReadOutcome> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let got = match self.recv(&mut buf, flags) {
                Ok(got) => got,
                Err(err) => match err.raw_os_error() {
                    Some(libc::ENOBUFS) => return Ok(ReadOutcome::Overflowed),
                    Some(libc::EAGAIN) => return Ok(ReadOutcome::Empty),
                    _ => return Err(err),
                },
            };
            for (msg_type, _, seq, payload) in messages(&buf[..got])? {
                if msg_type == NLMSG_ERROR {
                    let (errno, original_seq, message) = parse_error(payload)?;
                    on_error(original_seq, errno, message);
                } else if msg_type == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
                    && Some(seq) == answer_to
                {
                    on_generation(payload);
                    return Ok(ReadOutcome::Answered);
                }
            }
        }
    }
}

/// A received message: type, flags, sequence number, payload.
type Received<'a> = (u16, u16, u32, &'a [u8]);

/// The messages in one datagram.
fn messages(datagram: &[u8]) -> io::Result<Vec<Received<'_>>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let msg_type = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
        let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
        out.push((msg_type, flags, seq, &rest[NLMSG_HDRLEN..len]));
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(out)
}

#[derive(Debug, PartialEq, Eq)]
enum ReadOutcome {
    Answered,
    Overflowed,
    Empty,
}

fn parse_gen_id(payload: &[u8]) -> Option<u32> {
    attributes(payload.get(NFGENMSG_LEN..)?)
        .find(|&(kind, value)| kind == NFTA_GEN_ID && value.len() >= 4)
        .map(|(_, value)| u32::from_be_bytes(value[..4].try_into().unwrap()))
}

/// Parses `struct nlmsgerr` (errno, the original header) and its extended-ack attributes.
fn parse_error(payload: &[u8]) -> io::Result<(i32, u32, Option<String>)> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error",
        ));
    }
    let errno = -i32::from_ne_bytes(payload[0..4].try_into().unwrap());
    let original = &payload[4..4 + NLMSG_HDRLEN];
    let original_seq = u32::from_ne_bytes(original[8..12].try_into().unwrap());
    // With NETLINK_CAP_ACK the echoed message is only its header; TLVs follow.
    let message = attributes(&payload[4 + NLMSG_HDRLEN..])
        .filter(|&(kind, _)| kind == NLMSGERR_ATTR_MSG)
        .last()
        .map(|(_, text)| {
            let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        });
    Ok((errno, original_seq, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NLA_HDRLEN;

    #[test]
    fn error_payload_names_the_original_sequence_and_text() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let mut header = [0u8; NLMSG_HDRLEN];
        header[8..12].copy_from_slice(&42u32.to_ne_bytes());
        payload.extend_from_slice(&header);
        let text = b"No such chain\0";
        let len = NLA_HDRLEN + text.len();
        payload.extend_from_slice(&(len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let (errno, seq, message) = parse_error(&payload).unwrap();
        assert_eq!((errno, seq), (libc::ENOENT, 42));
        assert_eq!(message.as_deref(), Some("No such chain"));
    }
}
