//! Task events forwarded to containerd in the order they happen: one thread drains a queue
//! into the crate's [`RemotePublisher`], so a slow containerd never blocks a request and
//! TaskCreate → TaskStart → TaskExit → TaskDelete arrive in that order.

use std::sync::mpsc::{channel, Sender};
use std::thread;

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// One queued event.
struct Queued {
    topic: String,
    event: Box<dyn MessageDyn>,
}

/// The sending side of the event queue (cheap to clone).
#[derive(Clone)]
pub struct EventSender {
    tx: Option<Sender<Queued>>,
}

impl EventSender {
    /// Start the forwarding thread publishing to containerd in `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, rx) = channel::<Queued>();
        thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for q in rx {
                    if let Err(e) =
                        publisher.publish(Context::default(), &q.topic, &namespace, q.event)
                    {
                        containerd_shim::error!("publish {}: {e}", q.topic);
                    }
                }
            })
            .expect("spawn the events thread");
        EventSender { tx: Some(tx) }
    }

    /// A sender that drops every event (unit tests).
    pub fn discard() -> Self {
        EventSender { tx: None }
    }

    /// Queue `event` behind every event queued before it.
    pub fn send<E: Event + MessageDyn + 'static>(&self, event: E) {
        let Some(tx) = &self.tx else { return };
        let topic = event.topic();
        containerd_shim::debug!("event {topic}");
        let _ = tx.send(Queued {
            topic,
            event: Box::new(event),
        });
    }
}
