//! Connection credit per tunnel: how large a connection's receive window is,
//! so that tunnels whose reader stopped cannot take the credit the others need.
//!
//! Both QUIC and QMux have two levels of flow control: a window per stream
//! ([`STREAM_WINDOW`]) and one for the whole connection. Data a stream's
//! reader has not read yet holds both. With a fixed connection window of
//! four stream windows, four stalled tunnels (a paused `kubectl logs -f`,
//! an upload into a frozen process) held all of it, and nothing else on that
//! agent moved: neither other tunnels' data nor the `Dial` of a new one.
//!
//! quinn's stream window is one value for the whole connection, fixed at the
//! handshake (a runtime setter is only proposed upstream), so stream windows
//! cannot be tuned per tunnel; and a shared budget smaller than
//! `k × STREAM_WINDOW` cannot keep `k` stalled tunnels from filling it
//! without resetting them. So the connection window is not a second, shared
//! limit: it grows with the streams open on the connection, one stream
//! window each, plus spare windows for the control stream and the first
//! bytes of new tunnels. What bounds memory is each tunnel's own window
//! (4 MiB of what its reader has not read), the number of tunnels, and the
//! stall timeout, which ends a tunnel whose reader has read nothing for that
//! long (`docs/protocol.md`, "Flow control and isolation"). Go's HTTP/2
//! transport makes the same choice (a 1 GiB connection window over 4 MiB
//! stream windows).

use super::{PRE_ADMISSION_WINDOW, STREAM_WINDOW};

/// Stream windows a connection's receive window covers when few streams are
/// open: 16 MiB, the connection window connector always had, so a new
/// connection's first bulk transfers are as fast as before.
const MIN_SLOTS: u64 = 4;

/// Spare stream windows beyond the open streams: the control stream, the
/// first bytes of tunnels the peer opened whose credit has not been
/// announced yet, and room that spares a window update per stream opened.
const SPARE_SLOTS: u64 = 8;

/// The receive window for `slots` stream windows of `stream_window` bytes.
/// QUIC implementations announce new connection credit only once it has
/// grown by an eighth of the window (quinn: `receive_window / 8`), so up to
/// an eighth may be unannounced at any time; the window is that much larger,
/// so that what the peer has been told always covers every slot.
pub const fn window_for(slots: u64, stream_window: u64) -> u64 {
    let covered = slots * stream_window;
    covered + covered.div_ceil(7)
}

/// The receive window of a connection with no stream open yet, with
/// [`STREAM_WINDOW`] per stream.
pub const INITIAL_CONNECTION_WINDOW: u64 = window_for(MIN_SLOTS, STREAM_WINDOW as u64);

/// Counts a connection's open streams and sizes its receive window to them.
/// The window grows at once when a stream opens past the covered slots and
/// shrinks lazily (with hysteresis), so a storm of short tunnels does not
/// change it at every open and close.
///
/// A server's ledger starts *restricted* ([`CreditLedger::restricted`]):
/// until its peer is admitted the window is [`PRE_ADMISSION_WINDOW`], enough
/// for a `Hello` and nothing more.
#[derive(Debug)]
pub struct CreditLedger {
    stream_window: u64,
    open: u64,
    slots: u64,
    restricted: bool,
}

impl Default for CreditLedger {
    /// A ledger for streams of [`STREAM_WINDOW`].
    fn default() -> Self {
        Self::new(STREAM_WINDOW as u64)
    }
}

impl CreditLedger {
    /// A ledger for streams whose receive window is `stream_window` bytes.
    pub fn new(stream_window: u64) -> Self {
        Self {
            stream_window,
            open: 0,
            slots: MIN_SLOTS,
            restricted: false,
        }
    }

    /// A ledger whose window stays [`PRE_ADMISSION_WINDOW`] until
    /// [`CreditLedger::admit`] (the server's, for a peer not yet admitted).
    pub fn restricted(stream_window: u64) -> Self {
        Self {
            restricted: true,
            ..Self::new(stream_window)
        }
    }

    /// Lifts the restriction; returns the new window if it was restricted.
    pub fn admit(&mut self) -> Option<u64> {
        if !std::mem::take(&mut self.restricted) {
            return None;
        }
        if self.open + 1 > self.slots {
            self.slots = self.open + SPARE_SLOTS;
        }
        Some(self.window())
    }

    /// The receive window now.
    pub fn window(&self) -> u64 {
        if self.restricted {
            return PRE_ADMISSION_WINDOW;
        }
        window_for(self.slots, self.stream_window)
    }

    /// Streams open now.
    pub fn open(&self) -> u64 {
        self.open
    }

    /// A stream opened (either side opened it); returns the new window if it grew.
    pub fn opened(&mut self) -> Option<u64> {
        self.open += 1;
        // Every open stream and at least one spare window stay covered.
        (self.open + 1 > self.slots && !self.restricted).then(|| {
            self.slots = self.open + SPARE_SLOTS;
            self.window()
        })
    }

    /// A stream's receiving half went away; returns the new window if it shrank.
    pub fn closed(&mut self) -> Option<u64> {
        self.open = self.open.saturating_sub(1);
        let wanted = (self.open + SPARE_SLOTS).max(MIN_SLOTS);
        (self.slots > wanted + 2 * SPARE_SLOTS && !self.restricted).then(|| {
            self.slots = wanted;
            self.window()
        })
    }
}

/// Streams the peer may open at first: 32 tunnels at once before the first raise.
const INITIAL_STREAM_LIMIT: u32 = 64;

/// How many streams the peer may have open at once, raised as they are used, up
/// to the configured maximum.
///
/// quinn allocates the state of every stream the peer may open as soon as it
/// grants them: an agent that allowed its 10,064 tunnels from the start held
/// about 690 KiB of stream maps while idle (heaptrack, `docs/benchmarks.md`).
/// So the limit starts at [`INITIAL_STREAM_LIMIT`] and doubles whenever half of
/// it is open; the raise (a MAX_STREAMS frame) reaches the peer before it runs
/// out, unless it opens more than the open half again within one round trip,
/// when its next opens wait that round trip. The limit is never lowered.
#[derive(Debug)]
pub struct StreamLimit {
    limit: u32,
    max: u32,
}

impl StreamLimit {
    /// A limit that grows up to `max` streams open at once.
    pub fn new(max: u32) -> Self {
        Self {
            limit: max.min(INITIAL_STREAM_LIMIT),
            max,
        }
    }

    /// The limit now (the one to announce at the handshake, before any stream opened).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// `open` streams are open now; returns the new limit if it was raised.
    pub fn opened(&mut self, open: u64) -> Option<u32> {
        if open.saturating_mul(2) < u64::from(self.limit) || self.limit >= self.max {
            return None;
        }
        self.limit = self.limit.saturating_mul(2).min(self.max);
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_limit_doubles_at_half_use_up_to_its_maximum() {
        let mut limit = StreamLimit::new(10_064);
        assert_eq!(limit.limit(), INITIAL_STREAM_LIMIT);
        let mut raised = Vec::new();
        for open in 1..=10_064u64 {
            if let Some(new) = limit.opened(open) {
                raised.push((open, new));
            }
            assert!(u64::from(limit.limit()) >= open, "every open stream was allowed");
        }
        assert_eq!(
            raised,
            [
                (32, 128),
                (64, 256),
                (128, 512),
                (256, 1024),
                (512, 2048),
                (1024, 4096),
                (2048, 8192),
                (4096, 10_064)
            ]
        );
        assert_eq!(limit.opened(10_064), None, "never past the maximum");
        assert_eq!(StreamLimit::new(10).limit(), 10, "a small maximum is allowed at once");
    }

    #[test]
    fn every_open_stream_keeps_a_window_and_one_more_is_spare() {
        let mut ledger = CreditLedger::default();
        assert_eq!(ledger.window(), INITIAL_CONNECTION_WINDOW);
        for open in 1..=1_000u64 {
            ledger.opened();
            // What the peer may be owed after quinn's 1/8 announcement lag
            // still leaves a stream window beyond every open stream's.
            let announced = ledger.window() - ledger.window() / 8;
            assert!(announced >= (open + 1) * STREAM_WINDOW as u64, "open {open}");
        }
        for _ in 0..1_000 {
            ledger.closed();
            let announced = ledger.window() - ledger.window() / 8;
            assert!(announced >= (ledger.open() + 1) * STREAM_WINDOW as u64);
        }
        assert!(
            ledger.window() <= window_for(MIN_SLOTS + 3 * SPARE_SLOTS, STREAM_WINDOW as u64),
            "back within the hysteresis of the minimum"
        );
    }

    #[test]
    fn a_restricted_ledger_covers_a_hello_only_until_admitted() {
        let mut ledger = CreditLedger::restricted(STREAM_WINDOW as u64);
        assert_eq!(ledger.window(), PRE_ADMISSION_WINDOW);
        assert_eq!(ledger.opened(), None, "no growth before admission");
        assert_eq!(ledger.window(), PRE_ADMISSION_WINDOW);
        assert_eq!(ledger.admit(), Some(INITIAL_CONNECTION_WINDOW));
        assert_eq!(ledger.admit(), None, "once");
    }

    #[test]
    fn a_storm_of_short_streams_changes_the_window_rarely() {
        let mut ledger = CreditLedger::default();
        for _ in 0..100 {
            ledger.opened();
        }
        let changes = (0..10_000)
            .filter(|i| {
                if i % 2 == 0 {
                    ledger.opened().is_some()
                } else {
                    ledger.closed().is_some()
                }
            })
            .count();
        assert_eq!(changes, 0, "one stream more or less around a level moves nothing");
    }
}
