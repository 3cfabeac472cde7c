//! A NETLINK_NETFILTER socket that sends one nf_tables batch atomically and reports
//! which message, if any, the kernel rejected.
//!
//! Only errors are acknowledged: per-message acks for a 100 000-message batch would
//! overflow any receive buffer (the kernel drops them and the sender sees ENOBUFS), and
//! they carry no information when everything succeeded. The kernel processes a batch
//! synchronously inside `send`, so once a following `GETGEN` request is answered every
//! error the batch produced is already queued ahead of that answer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;
const SOL_NETLINK: libc::c_int = 270;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_NONREC: u16 = 0x100;
/// NLM_F_ROOT | NLM_F_MATCH: every object, in as many messages as it takes.
pub const NLM_F_DUMP: u16 = 0x300;
/// Set on a dump's messages when the ruleset changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSGERR_ATTR_MSG: u16 = 1;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// The largest a nested attribute may grow: `nla_len` is 16 bits.
pub const MAX_ATTR_LEN: usize = u16::MAX as usize;

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// What a message in a batch programs, kept so a kernel error can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageTag {
    /// A static description such as "add rule" or "add chain".
    pub action: &'static str,
    /// An index into the caller's list of subjects, or `NO_SUBJECT`.
    pub subject: u32,
}

pub const NO_SUBJECT: u32 = u32::MAX;

fn push_header(buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched later
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn patch_len(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An attribute whose value is the concatenation of `parts`, padded to 4 bytes.
fn push_attr(buf: &mut Vec<u8>, kind: u16, parts: &[&[u8]]) {
    let len = NLA_HDRLEN + parts.iter().map(|p| p.len()).sum::<usize>();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    buf.resize(buf.len() + align4(len) - len, 0);
}

/// The attributes in `bytes`, as (type without the nested flag, value); stops at the first
/// malformed one.
pub fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
        if len < NLA_HDRLEN || len > rest.len() {
            return None;
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, value))
    })
}

/// A NUL-terminated string attribute's text.
pub fn attr_text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value.split(|&b| b == 0).next()?).ok()
}

/// A batch of nf_tables messages under construction, framed by BATCH_BEGIN/END.
pub struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    tags: Vec<MessageTag>,
    open_message: Option<usize>,
    open_nests: Vec<usize>,
}

/// A kernel rejection, tied back to the message that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub errno: i32,
    /// `None` when the failure was not tied to one message (for example at commit).
    pub tag: Option<MessageTag>,
    /// The kernel's extended-ack text, when it gave one.
    pub message: Option<String>,
}

impl Batch {
    pub fn new(first_seq: u32) -> Self {
        let mut batch = Batch {
            buf: Vec::with_capacity(1 << 16),
            first_seq,
            tags: Vec::new(),
            open_message: None,
            open_nests: Vec::new(),
        };
        batch.push_control(NFNL_MSG_BATCH_BEGIN);
        batch
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Number of nf_tables messages, not counting the batch frame.
    pub fn message_count(&self) -> usize {
        self.tags.len()
    }

    fn next_seq(&self) -> u32 {
        // seq first_seq is BATCH_BEGIN; message i has first_seq + 1 + i.
        self.first_seq.wrapping_add(1 + self.tags.len() as u32)
    }

    fn push_header(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        push_header(&mut self.buf, msg_type, flags, seq, family, res_id);
    }

    fn patch_len(&mut self, start: usize) {
        patch_len(&mut self.buf, start);
    }

    fn push_control(&mut self, msg_type: u16) {
        let start = self.buf.len();
        let seq = if msg_type == NFNL_MSG_BATCH_BEGIN {
            self.first_seq
        } else {
            self.next_seq()
        };
        self.push_header(
            msg_type,
            NLM_F_REQUEST,
            seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        self.patch_len(start);
    }

    /// Starts an nf_tables message; attributes follow until [`Batch::end_message`].
    pub fn begin_message(&mut self, family: u8, msg: u16, flags: u16, tag: MessageTag) {
        debug_assert!(self.open_message.is_none(), "message left open");
        let start = self.buf.len();
        let seq = self.next_seq();
        self.push_header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
        );
        self.tags.push(tag);
        self.open_message = Some(start);
    }

    pub fn end_message(&mut self) {
        debug_assert!(self.open_nests.is_empty(), "attribute nest left open");
        let start = self.open_message.take().expect("no open message");
        self.patch_len(start);
    }

    pub fn attr_bytes(&mut self, kind: u16, value: &[u8]) {
        push_attr(&mut self.buf, kind, &[value]);
    }

    /// A NUL-terminated string attribute, as nf_tables expects for names.
    pub fn attr_str(&mut self, kind: u16, value: &str) {
        push_attr(&mut self.buf, kind, &[value.as_bytes(), &[0]]);
    }

    /// nf_tables integer attributes are big-endian.
    pub fn attr_be32(&mut self, kind: u16, value: u32) {
        self.attr_bytes(kind, &value.to_be_bytes());
    }

    pub fn attr_be64(&mut self, kind: u16, value: u64) {
        self.attr_bytes(kind, &value.to_be_bytes());
    }

    pub fn nest_start(&mut self, kind: u16) {
        self.open_nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// Closes the innermost nest. Callers keep nests under [`MAX_ATTR_LEN`]; a larger one
    /// would silently wrap `nla_len`, so it is a programming error.
    pub fn nest_end(&mut self) {
        let start = self.open_nests.pop().expect("no open nest");
        let len = self.buf.len() - start;
        assert!(len <= MAX_ATTR_LEN, "netlink attribute nest of {len} bytes");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// Bytes written since `mark` (a value of [`Batch::len_bytes`]).
    pub fn bytes_since(&self, mark: usize) -> usize {
        self.buf.len() - mark
    }

    /// Closes the batch and returns the wire bytes and the tag of every message.
    pub fn finish(mut self) -> (Vec<u8>, Vec<MessageTag>, u32) {
        self.push_control(NFNL_MSG_BATCH_END);
        let first = self.first_seq;
        (self.buf, self.tags, first)
    }
}

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
                NETLINK_NETFILTER,
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
        set_int_option(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        set_int_option(&fd, SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
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

    /// Sends a finished batch and returns the kernel's first error, if any. The kernel
    /// applies a batch all or nothing, so an error means nothing changed.
    pub fn send_batch(
        &mut self,
        wire: &[u8],
        tags: &[MessageTag],
        first_seq: u32,
    ) -> io::Result<Result<(), BatchError>> {
        // One batch must travel in one skb; the send buffer has to hold all of it.
        Self::size_buffer(
            &self.fd,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            wire.len() + 4096,
        )?;
        self.seq = first_seq.wrapping_add(tags.len() as u32 + 2);
        self.send_all(wire)?;
        let mut first_error: Option<BatchError> = None;
        let overflowed = self.await_generation(
            &mut |seq, errno, message| {
                // Message i carries first_seq + 1 + i; BATCH_BEGIN (a commit failure) is 0.
                let offset = seq.wrapping_sub(first_seq) as usize;
                if errno == 0 || first_error.is_some() || offset > tags.len() + 1 {
                    return;
                }
                let tag = offset.checked_sub(1).and_then(|i| tags.get(i).copied());
                first_error = Some(BatchError {
                    errno,
                    tag,
                    message,
                });
            },
            &mut |_| {},
        )?;
        if let Some(error) = first_error {
            return Ok(Err(error));
        }
        if overflowed {
            // Error reports were dropped: something failed, but the kernel could not say what.
            return Ok(Err(BatchError {
                errno: libc::ENOBUFS,
                tag: None,
                message: Some("error reports overflowed the receive buffer".into()),
            }));
        }
        Ok(Ok(()))
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

    #[test]
    fn batch_frames_messages_with_consecutive_sequence_numbers() {
        let mut batch = Batch::new(100);
        batch.begin_message(
            2,
            0,
            NLM_F_CREATE,
            MessageTag {
                action: "add table",
                subject: NO_SUBJECT,
            },
        );
        batch.attr_str(1, "t");
        batch.end_message();
        let (wire, tags, first) = batch.finish();
        assert_eq!(first, 100);
        assert_eq!(tags.len(), 1);
        // begin (20 bytes) + table message (20 + 8) + end (20)
        assert_eq!(wire.len(), 20 + 28 + 20);
        let seqs: Vec<u32> = [0usize, 20, 48]
            .iter()
            .map(|&o| u32::from_ne_bytes(wire[o + 8..o + 12].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![100, 101, 102]);
        // The string attribute is NUL-terminated and padded to 4 bytes.
        assert_eq!(&wire[40..48], &[6, 0, 1, 0, b't', 0, 0, 0]);
    }

    #[test]
    fn nests_record_their_length() {
        let mut batch = Batch::new(1);
        batch.begin_message(
            2,
            6,
            0,
            MessageTag {
                action: "add rule",
                subject: 0,
            },
        );
        let mark = batch.len_bytes();
        batch.nest_start(4);
        batch.attr_be32(1, 7);
        batch.nest_end();
        assert_eq!(batch.bytes_since(mark), 12);
        batch.end_message();
        let (wire, _, _) = batch.finish();
        let nest = &wire[40..52];
        assert_eq!(u16::from_ne_bytes([nest[0], nest[1]]), 12);
        assert_eq!(u16::from_ne_bytes([nest[2], nest[3]]), 4 | NLA_F_NESTED);
        assert_eq!(&nest[8..12], &7u32.to_be_bytes());
    }

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
