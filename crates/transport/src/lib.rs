//! [`UnixConn`]: a Unix stream connection that wakes its task only when
//! there is something to read.
//!
//! Tokio's `UnixStream` is registered for reading and writing. On a Unix
//! stream socket that costs a wake-up each time the peer reads: when the
//! peer takes bytes we sent, the kernel signals "writable" to our epoll
//! (`unix_write_space`), and an event loop asleep in `epoll_wait` waiting
//! for the answer is woken for nothing. A call and its reply then cost
//! each side a second wake-up (a context switch, or an inter-processor
//! interrupt) in the middle of the exchange. Between a gateway and a
//! service sharing a CPU it was measured as one more switch per call.
//!
//! A request-reply connection rarely needs to wait to write: a call goes
//! into a socket its peer has emptied, far below the socket's send buffer.
//! For the rare write that does not go through at once, the connection is
//! registered for writing, through a duplicate of its descriptor, for as
//! long as that wait lasts.
//!
//! Each read and each write spends a unit of tokio's cooperative budget,
//! as tokio's own sockets do: a peer that keeps a connection busy cannot
//! keep its task from giving the thread to the others.
//!
//! Measured before it was used, in quick runs of the `compare` benchmark
//! (300 calls per figure, old and new binaries alternating, medians of
//! five each): a proxied call (client, gateway, and a service written with
//! `qm_ipc_client::service::Service` behind it) went from 78.6 to 68.0 µs
//! p50 with the gateway and the service on one CPU and the client on
//! another, and from 81.7 to 74.1 µs with all three on one CPU.
//!
//! The gateway client's own `qm_ipc_client::Connection` keeps tokio's
//! stream. With this type (and a short read taken to empty the socket, as
//! tokio does), its typed `Get` measured 1.18, 1.40 and 1.30 times a
//! blocking raw client with the client and the gateway on separate CPUs,
//! against 1.15, 1.16 and 1.14 with tokio's stream; with both on one CPU,
//! 1.15, 1.13 and 1.11 against 1.40, 1.39 and 1.41 (library benchmark,
//! old and new alternating). On one CPU the wake-up saved is a context
//! switch. On separate CPUs of these virtual machines the useless
//! wake-up seems to get the client's halted CPU running before the reply
//! comes. The library's target is set on separate CPUs, so the client
//! keeps tokio's stream.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A Unix stream connection watched for reading only (see the crate
/// documentation). Must be created inside a tokio runtime with I/O
/// enabled, like tokio's own sockets.
#[derive(Debug)]
pub struct UnixConn {
    fd: AsyncFd<StdUnixStream>,
}

impl UnixConn {
    /// Connects to `path` without blocking the thread.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Self::from_tokio(stream)
    }

    /// Takes over a tokio stream (which is deregistered from its event
    /// loop first).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::from_std(stream.into_std()?)
    }

    /// Takes over a standard library stream (made non-blocking here).
    pub fn from_std(stream: StdUnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            fd: register(stream, Interest::READABLE)?,
        })
    }

    /// The socket, for options and credentials (not for reading or
    /// writing past this type: its readiness would go stale).
    pub fn get_ref(&self) -> &StdUnixStream {
        self.fd.get_ref()
    }

    /// Reads what is there, waiting until something is; `Ok(0)` at the
    /// end. Cancel-safe.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        tokio::task::consume_budget().await;
        loop {
            // A short read is not taken to mean the socket is empty: the
            // kernel also stops a read at passed descriptors or at another
            // writer's credentials, with bytes still queued behind them.
            // Only `EAGAIN` clears the readiness.
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().read(buf)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads without waiting: `WouldBlock` when there is nothing.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.get_ref().read(buf)
    }

    /// Whether the connection is open with nothing to read, asked of the
    /// socket now (a close the event loop has not seen yet counts): for a
    /// pooled connection about to be used again. `Ok(false)` when it is
    /// closed or holds unasked bytes (one byte is then consumed: the
    /// connection is not to be used again).
    ///
    /// The readiness the last `read` left behind is stale (a read that
    /// got its bytes does not clear it), so the next `read` would try the
    /// socket once for nothing before waiting. The answer here clears it:
    /// one system call for both.
    pub fn is_quiet(&self) -> io::Result<bool> {
        let mut probe = [0u8; 1];
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.fd.poll_read_ready(&mut cx) {
            std::task::Poll::Ready(Ok(mut ready)) => {
                match ready.try_io(|fd| fd.get_ref().read(&mut probe)) {
                    Ok(Ok(_)) => Ok(false),
                    Ok(Err(e)) => Err(e),
                    Err(_would_block) => Ok(true),
                }
            }
            std::task::Poll::Ready(Err(e)) => Err(e),
            std::task::Poll::Pending => match self.fd.get_ref().read(&mut probe) {
                Ok(_) => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                Err(e) => Err(e),
            },
        }
    }

    /// Writes all of `buf`. Not cancel-safe: a cancelled write may have
    /// sent part of `buf`, so a caller that gives up drops the connection.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        tokio::task::consume_budget().await;
        while !buf.is_empty() {
            match self.fd.get_ref().write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the socket takes more bytes, registered for writing
    /// only for the wait.
    async fn writable(&self) -> io::Result<()> {
        let duplicate = register(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?;
        let _ready = duplicate.writable().await?;
        Ok(())
    }
}

fn register(stream: StdUnixStream, interest: Interest) -> io::Result<AsyncFd<StdUnixStream>> {
    // SAFETY: the AsyncFd owns the stream from here on; its descriptor
    // stays open and the same until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every wait in these tests has a deadline.
    const DEADLINE: Duration = Duration::from_secs(10);

    async fn pair() -> (tempfile::TempDir, UnixConn, tokio::net::UnixStream) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let conn = UnixConn::connect(&path).await.expect("connect");
        let (peer, _) = listener.accept().await.expect("accept");
        (dir, conn, peer)
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, f)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_takes_waits_for_the_reader() {
        let (_dir, conn, mut peer) = pair().await;
        // Several times any default socket buffer: the write must wait for
        // the peer to read, and must see it read.
        const SIZE: usize = 4 << 20;
        let sent = vec![7u8; SIZE];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while got.len() < SIZE {
                let n = peer.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            peer.write_all(b"done").await.expect("reply");
            // Kept open: a closed peer would read as the end below.
            (got, peer)
        });
        within("the write, once the peer reads", conn.write_all(&sent))
            .await
            .expect("write");
        let (got, _peer) = within("the reader", reader).await.expect("reader");
        assert_eq!(got, sent);
        let mut reply = [0u8; 16];
        let n = within("the reply", conn.read(&mut reply))
            .await
            .expect("read");
        assert_eq!(&reply[..n], b"done");
        let mut more = [0u8; 1];
        assert_eq!(
            conn.try_read(&mut more).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
    }

    /// A pooled connection asked whether it is quiet: yes while the peer
    /// is silent, also right after a read that got its bytes (whose
    /// readiness the answer clears), and the next reply still wakes the
    /// read; no once the peer sent something unasked, or closed.
    #[tokio::test]
    async fn a_quiet_connection_is_told_from_a_closed_or_talking_one() {
        let (_dir, conn, mut peer) = pair().await;
        assert!(conn.is_quiet().expect("fresh"));
        let mut buf = [0u8; 64];
        for round in 0..3u8 {
            peer.write_all(&[round; 2]).await.expect("write");
            let n = within("a reply", conn.read(&mut buf)).await.expect("read");
            assert_eq!(&buf[..n], &[round; 2]);
            assert!(conn.is_quiet().expect("after a reply"), "round {round}");
        }
        peer.write_all(b"unasked").await.expect("write");
        // Seen by the socket at once, before the event loop has turned.
        assert!(!conn.is_quiet().expect("unasked bytes"));
        let (_dir, conn, peer) = pair().await;
        drop(peer);
        assert!(!conn.is_quiet().expect("closed"));
    }

    /// Bytes that come after a read must wake the next one.
    #[tokio::test]
    async fn bytes_after_a_short_read_are_read() {
        let (_dir, conn, mut peer) = pair().await;
        let mut buf = [0u8; 64];
        for round in 0..100u8 {
            peer.write_all(&[round; 3]).await.expect("write");
            let n = within("a round", conn.read(&mut buf)).await.expect("read");
            assert_eq!(&buf[..n], &[round; 3], "round {round}");
        }
    }

    /// A peer that keeps the socket full must not keep the reading task
    /// on the thread: the thread's other tasks get their turns. (Failing,
    /// the reader would hold the thread for good, so the runtime runs on
    /// a thread of its own and the test waits for it with a deadline.)
    #[test]
    fn a_connection_kept_busy_gives_the_thread_to_other_tasks() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (_dir, conn, peer) = pair().await;
                let peer = peer.into_std().expect("std stream");
                peer.set_nonblocking(false).expect("blocking");
                // Far faster than a reader taking a byte at a time: the
                // socket never runs dry.
                std::thread::spawn(move || {
                    let chunk = [1u8; 64 << 10];
                    while (&peer).write_all(&chunk).is_ok() {}
                });
                let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let reader = tokio::spawn({
                    let read = read.clone();
                    async move {
                        let mut byte = [0u8; 1];
                        while conn.read(&mut byte).await.unwrap_or(0) > 0 {
                            read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                // Sees the reader's progress only if it gets turns while
                // the reader has bytes to read.
                while read.load(std::sync::atomic::Ordering::Relaxed) < 10_000 {
                    tokio::task::yield_now().await;
                }
                reader.abort();
            });
            let _ = done.send(());
        });
        finished
            .recv_timeout(DEADLINE)
            .expect("the other task got its turns while the reader had bytes");
    }

    /// Bytes and the close in one wake-up: the close must still be read
    /// after the bytes.
    #[tokio::test]
    async fn a_close_that_came_with_the_last_bytes_is_read() {
        let (_dir, conn, mut peer) = pair().await;
        peer.write_all(b"last").await.expect("write");
        drop(peer);
        let mut buf = [0u8; 64];
        let n = within("the bytes", conn.read(&mut buf))
            .await
            .expect("read");
        assert_eq!(&buf[..n], b"last");
        let n = within("the end", conn.read(&mut buf)).await.expect("read");
        assert_eq!(n, 0);
    }
}
