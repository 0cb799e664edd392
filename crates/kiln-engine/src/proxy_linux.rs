//! Published ports (`-p HOST:CONTAINER`) without iptables: the monitor listens on the host and,
//! per connection, opens a socket inside the container's network namespace and copies bytes
//! both ways. Sockets belong to the namespace they were created in, so one thread moves into
//! the container's namespace and only creates sockets; connecting and copying happen on the
//! runtime as usual.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::mpsc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::container::PortSpec;

/// Binds every published port on the host; a host port 0 becomes the one the kernel picked.
pub(crate) fn bind(ports: &[PortSpec]) -> io::Result<Vec<(PortSpec, TcpListener)>> {
    let mut out = Vec::new();
    for p in ports {
        let listener = std::net::TcpListener::bind(SocketAddr::new(p.host_ip, p.host_port))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding {}:{}: {e}", p.host_ip, p.host_port),
                )
            })?;
        listener.set_nonblocking(true)?;
        let bound = PortSpec {
            host_port: listener.local_addr()?.port(),
            ..*p
        };
        out.push((bound, TcpListener::from_std(listener)?));
    }
    Ok(out)
}

type SocketRequest = oneshot::Sender<io::Result<TcpSocket>>;

/// Makes sockets in one network namespace, from a thread that lives there.
#[derive(Clone)]
struct Dialer {
    requests: mpsc::Sender<SocketRequest>,
}

impl Dialer {
    fn new(netns: File) -> io::Result<Dialer> {
        let (requests, rx) = mpsc::channel::<SocketRequest>();
        let (entered_tx, entered_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("kiln-netns".into())
            .spawn(move || {
                let entered = rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                );
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    return;
                }
                // Ends when every Dialer is dropped.
                for reply in rx {
                    let _ = reply.send(TcpSocket::new_v4());
                }
            })?;
        entered_rx
            .recv()
            .map_err(|_| io::Error::other("the network namespace thread died"))??;
        Ok(Dialer { requests })
    }

    async fn socket(&self) -> io::Result<TcpSocket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| io::Error::other("the network namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the network namespace thread is gone"))?
    }
}

/// Serves every listener into the namespace `netns`, connecting to the container's loopback.
/// Dropping the returned set stops listening and closes every proxied connection.
pub(crate) fn serve(
    listeners: Vec<(PortSpec, TcpListener)>,
    netns: File,
) -> io::Result<JoinSet<()>> {
    let dialer = Dialer::new(netns)?;
    let mut tasks = JoinSet::new();
    for (port, listener) in listeners {
        let dialer = dialer.clone();
        tasks.spawn(async move {
            let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.container_port);
            // Dropped with this task, which aborts the connections.
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    // Reap finished connections so the set does not grow.
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let Ok((mut inbound, _)) = accepted else {
                    // Out of file descriptors, say: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let dialer = dialer.clone();
                conns.spawn(async move {
                    let outbound = match dialer.socket().await {
                        Ok(s) => s.connect(target).await,
                        Err(e) => Err(e),
                    };
                    // Nothing listens in the container (yet): close the client's connection,
                    // as docker's proxy does.
                    let Ok(mut outbound) = outbound else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
    }
    Ok(tasks)
}
