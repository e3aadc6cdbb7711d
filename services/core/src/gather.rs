//! Taking work from a channel in groups: the first item, and what else comes
//! soon after it. The persister's write batches and the deliverer's
//! acknowledgement checks are made this way.

use std::time::Duration;

use tokio::sync::mpsc;

/// `first` and whatever else `incoming` yields within `window` of now, up
/// to `max` items in all (at least `first`). Returns early if the channel
/// closes; the caller's next `recv` tells it so.
pub async fn group<T>(incoming: &mut mpsc::Receiver<T>, first: T, window: Duration, max: usize) -> Vec<T> {
    let mut group = vec![first];
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    while group.len() < max {
        tokio::select! {
            biased;
            next = incoming.recv() => match next {
                Some(next) => group.push(next),
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_what_comes_within_the_window_up_to_the_limit() {
        let (send, mut incoming) = mpsc::channel(16);
        for i in 1..=5 {
            send.send(i).await.unwrap();
        }
        // Waiting items are taken at once, up to the limit.
        assert_eq!(group(&mut incoming, 0, Duration::from_millis(2), 3).await, [0, 1, 2]);
        assert_eq!(
            group(&mut incoming, 0, Duration::from_millis(2), 10).await,
            [0, 3, 4, 5]
        );

        // An item after the window is left for the next group.
        let late = send.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(6).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(7).await.unwrap();
        });
        assert_eq!(group(&mut incoming, 0, Duration::from_millis(2), 10).await, [0, 6]);
        assert_eq!(incoming.recv().await, Some(7));

        // A closed channel ends the group early.
        drop(send);
        assert_eq!(group(&mut incoming, 8, Duration::from_secs(60), 10).await, [8]);
    }
}
