import Logging
import NIOCore
import TapTrace
import TapWire

/// The observing side of one proxied connection: feeds the decoder and hands what it finds to the pipeline.
///
/// Lives on the connection's event loop, shared by the two splice handlers. Its work per read is one clock read
/// and the decoder's frame walk; spans are built and written elsewhere.
final class ConnectionTap {
    private var decoder: ConnectionDecoder
    private let info: ConnectionInfo
    private let pipeline: SpanPipeline
    private let logger: Logger
    private var reportedStop = false
    private var closed = false
    private var closeReason = "closed"
    private var calls = 0
    /// Gets the decoder's events while recording; nil when not recording or once recording stopped.
    private var recorder: SessionRecorder?

    init(
        info: ConnectionInfo, pipeline: SpanPipeline, limits: GRPCCallAssembler.Limits, logger: Logger,
        recorder: SessionRecorder? = nil
    ) {
        self.info = info
        self.pipeline = pipeline
        self.decoder = ConnectionDecoder(limits: limits)
        self.logger = logger
        self.recorder = recorder
        recorder?.connectionOpened(info)
    }

    func observe(_ buffer: ByteBuffer, direction: Direction) {
        let now = WallClock.nowNanos()
        guard decoder.isDecoding else {
            decoder.feed(buffer, direction: direction, at: now, emit: { _ in })
            return
        }
        decoder.feed(buffer, direction: direction, at: now, emit: submit)
        if recorder != nil { handOverEvents() }
        if !reportedStop, let reason = decoder.stoppedReason {
            reportedStop = true
            pipeline.decodingStopped(reason: reason)
            logger.warning(
                "decoding stopped; forwarding continues",
                metadata: ["connection": "\(info.id)", "reason": "\(reason)"])
        }
    }

    func halfClosed(_ direction: Direction) {
        logger.trace("half-closed", metadata: ["connection": "\(info.id)", "direction": "\(direction)"])
    }

    func failed(_ direction: Direction, error: Error, reset: Bool) {
        let side = direction == .clientToServer ? "client" : "upstream"
        closeReason = reset ? "reset by \(side)" : "\(side) error: \(error)"
        logger.debug("connection error", metadata: ["connection": "\(info.id)", "error": "\(error)"])
    }

    func sideClosed(_ direction: Direction) {
        guard !closed else { return }
        closed = true
        let now = WallClock.nowNanos()
        decoder.close(at: now, emit: submit)
        if recorder != nil { handOverEvents() }
        let summary = ConnectionSummary(
            info: info, kind: decoder.kind.rawValue, bytesToServer: decoder.bytesToServer,
            bytesToClient: decoder.bytesToClient, endTimeUnixNano: now, decodingStopped: decoder.stoppedReason,
            closeReason: closeReason, calls: calls)
        recorder?.connectionClosed(summary)
        pipeline.submit(connection: summary)
    }

    /// Passes the decoder's events to the recorder; when it has stopped, the decoder stops producing them.
    private func handOverEvents() {
        let events = decoder.takeEvents()
        guard !events.isEmpty, let recorder else { return }
        if !recorder.submit(connection: info.id, events: events) {
            decoder.stopEvents()
            self.recorder = nil
        }
    }

    private func submit(_ record: GRPCCallRecord) {
        calls += 1
        pipeline.submit(call: record, connection: info)
    }
}
