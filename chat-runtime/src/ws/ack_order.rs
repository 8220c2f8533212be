//! Replies to pipelined sends keep the order of the sends. A client may send
//! many `send` frames without waiting; each is committed by its room's queue
//! and answered from its own task, so two answers could otherwise race (a
//! retried send, answered `duplicate: true` from the same commit, before the
//! original). Each answer waits until the previous send's answer is queued.
//! An idle socket holds one `Option` here, no task.

use tokio::sync::oneshot;

/// One socket's chain of send answers.
#[derive(Debug, Default)]
pub struct AckOrder {
    previous: Option<oneshot::Receiver<()>>,
}

/// The place of one answer in the chain.
#[derive(Debug)]
pub struct AckTurn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

impl AckOrder {
    /// The turn of the next send's answer.
    pub fn take_turn(&mut self) -> AckTurn {
        let (done, queued) = oneshot::channel();
        AckTurn {
            after: self.previous.replace(queued),
            done,
        }
    }
}

impl AckTurn {
    /// Waits until the previous answer is queued (or was dropped).
    pub async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
    }

    /// Lets the next answer go.
    pub fn done(self) {
        let _ = self.done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn answers_come_out_in_send_order_whatever_finishes_first() {
        let mut order = AckOrder::default();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The later sends finish their "commit" first.
        for (i, delay_ms) in [(0, 60u64), (1, 30), (2, 0)] {
            let mut turn = order.take_turn();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                turn.wait().await;
                out.lock().unwrap().push(i);
                turn.done();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*out.lock().unwrap(), [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_dropped_turn_does_not_block_the_next() {
        let mut order = AckOrder::default();
        drop(order.take_turn());
        let mut second = order.take_turn();
        tokio::time::timeout(std::time::Duration::from_secs(1), second.wait())
            .await
            .unwrap();
    }
}
