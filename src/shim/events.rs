//! Task events forwarded to containerd in the order they happen: one thread drains a queue
//! into the crate's [`RemotePublisher`], so a slow containerd never blocks a request and
//! TaskCreate → TaskStart → TaskExit → TaskDelete arrive in that order.

use std::sync::mpsc::{channel, Sender};
use std::thread;
use std::time::Duration;

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// One entry of the queue: an event, or a flush marker the thread acknowledges.
enum Queued {
    Event {
        topic: String,
        event: Box<dyn MessageDyn>,
    },
    Flush(Sender<()>),
}

/// The sending side of the event queue (cheap to clone).
#[derive(Clone)]
pub struct EventSender {
    tx: Option<Sender<Queued>>,
}

impl EventSender {
    /// Start the forwarding thread publishing to containerd in `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        Self::forwarding(move |topic, event| {
            if let Err(e) = publisher.publish(Context::default(), &topic, &namespace, event) {
                containerd_shim::error!("publish {topic}: {e}");
            }
        })
    }

    /// Start the thread handing each queued event to `publish`, in order.
    fn forwarding(mut publish: impl FnMut(String, Box<dyn MessageDyn>) + Send + 'static) -> Self {
        let (tx, rx) = channel::<Queued>();
        thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for q in rx {
                    match q {
                        Queued::Event { topic, event } => publish(topic, event),
                        Queued::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawn the events thread");
        EventSender { tx: Some(tx) }
    }

    /// Wait until every event queued so far has been published, at most `timeout`; false if
    /// it took longer. The shim calls it before exiting, so the last events (TaskExit,
    /// TaskDelete) are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (done, wait) = channel();
        tx.send(Queued::Flush(done)).is_ok() && wait.recv_timeout(timeout).is_ok()
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
        let _ = tx.send(Queued::Event {
            topic,
            event: Box::new(event),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::{TaskDelete, TaskExit};
    use std::sync::{Arc, Mutex};

    #[test]
    fn flush_waits_for_queued_events_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let events = EventSender::forwarding(move |topic, _| {
            // A slow containerd.
            thread::sleep(Duration::from_millis(100));
            record.lock().unwrap().push(topic);
        });
        events.send(TaskExit::new());
        events.send(TaskDelete::new());
        assert!(events.flush(Duration::from_secs(10)));
        assert_eq!(*seen.lock().unwrap(), ["/tasks/exit", "/tasks/delete"]);
    }

    #[test]
    fn flush_gives_up_after_its_timeout() {
        let events = EventSender::forwarding(|_, _| thread::sleep(Duration::from_secs(2)));
        events.send(TaskExit::new());
        assert!(!events.flush(Duration::from_millis(100)));
        assert!(EventSender::discard().flush(Duration::from_millis(1)));
    }
}
