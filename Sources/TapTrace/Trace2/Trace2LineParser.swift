/// Turns a Trace2 byte stream (a socket connection, a growing file) into events, whatever the read boundaries.
///
/// Reads may split a line anywhere; the parser keeps the partial line until its newline arrives. A line that is
/// not a Trace2 event (bad JSON, not an object, no `event`/`sid`) is skipped and counted, and parsing goes on with
/// the next line. A line longer than ``Limits/maximumLineBytes`` is dropped (counted) without buffering it, so a
/// writer that never sends a newline cannot grow memory. Pure: no I/O, no clock.
public struct Trace2LineParser: Sendable {
    /// Bounds on what one stream may make the parser hold.
    public struct Limits: Sendable {
        /// The longest line kept; git's events are a few hundred bytes, long argv or `data_json` a few KiB.
        public var maximumLineBytes: Int = 1 << 20

        public init(maximumLineBytes: Int = 1 << 20) {
            self.maximumLineBytes = maximumLineBytes
        }
    }

    /// What the parser has seen, for logs, metrics and tests.
    public struct Counts: Sendable, Equatable {
        /// Events returned.
        public var events = 0
        /// Lines skipped because they were not valid JSON objects with `event` and `sid`.
        public var malformed = 0
        /// Lines dropped because they exceeded the line limit.
        public var oversized = 0
        /// A partial line left at the end of the stream (the writer stopped mid-event).
        public var truncated = 0
        /// Empty or whitespace-only lines (ignored, not an error).
        public var blank = 0

        public init() {}
    }

    /// The bounds this parser enforces.
    public let limits: Limits
    /// What the parser has seen so far.
    public private(set) var counts = Counts()
    private var partial: [UInt8] = []
    private var discardingOversized = false

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Bytes of the partial line held now.
    public var bufferedBytes: Int { partial.count }

    /// Feeds the next bytes of the stream; returns the events of every line they complete.
    public mutating func feed(_ bytes: some Collection<UInt8>) -> [Trace2Event] {
        var events: [Trace2Event] = []
        var lineStart = bytes.startIndex
        var index = bytes.startIndex
        while index != bytes.endIndex {
            if bytes[index] == UInt8(ascii: "\n") {
                let piece = bytes[lineStart..<index]
                if discardingOversized {
                    discardingOversized = false
                } else if partial.isEmpty {
                    if piece.count > limits.maximumLineBytes {
                        counts.oversized += 1
                    } else {
                        line(piece, into: &events)
                    }
                } else {
                    if partial.count + piece.count > limits.maximumLineBytes {
                        counts.oversized += 1
                    } else {
                        partial.append(contentsOf: piece)
                        line(partial, into: &events)
                    }
                    partial.removeAll(keepingCapacity: partial.count <= 4096)
                }
                lineStart = bytes.index(after: index)
            }
            index = bytes.index(after: index)
        }
        if lineStart != bytes.endIndex, !discardingOversized {
            let rest = bytes[lineStart...]
            if partial.count + rest.count > limits.maximumLineBytes {
                counts.oversized += 1
                partial.removeAll()
                discardingOversized = true
            } else {
                partial.append(contentsOf: rest)
            }
        }
        return events
    }

    /// Parses one datagram (`af_unix:dgram:` targets send one event per datagram, newline optional).
    public mutating func feedDatagram(_ bytes: some Collection<UInt8>) -> [Trace2Event] {
        var events: [Trace2Event] = []
        var start = bytes.startIndex
        var index = bytes.startIndex
        while index != bytes.endIndex {
            if bytes[index] == UInt8(ascii: "\n") {
                line(bytes[start..<index], into: &events)
                start = bytes.index(after: index)
            }
            index = bytes.index(after: index)
        }
        if start != bytes.endIndex { line(bytes[start...], into: &events) }
        return events
    }

    /// Ends the stream. A complete JSON object without its newline still counts as an event; anything else left
    /// over is a truncated event (the writer stopped mid-line) and is counted, not returned.
    public mutating func finish() -> [Trace2Event] {
        defer {
            partial = []
            discardingOversized = false
        }
        if discardingOversized { return [] }
        guard !partial.isEmpty else { return [] }
        if let event = try? Trace2Event.parse(line: partial) {
            counts.events += 1
            return [event]
        }
        if partial.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
            counts.blank += 1
        } else {
            counts.truncated += 1
        }
        return []
    }

    private mutating func line(_ bytes: some Collection<UInt8>, into events: inout [Trace2Event]) {
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
            counts.blank += 1
            return
        }
        do {
            events.append(try Trace2Event.parse(line: bytes))
            counts.events += 1
        } catch {
            counts.malformed += 1
        }
    }
}
