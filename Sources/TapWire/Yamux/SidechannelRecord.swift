import NIOCore

/// What the tap saw on one sidechannel: the raw pack-data path beside a gRPC call (GITALY-WIRE.md §1).
public struct SidechannelRecord: Sendable, Hashable {
    /// How the sidechannel's yamux stream ended.
    public enum End: Sendable, Hashable {
        case closed
        case reset(by: Direction)
        case connectionLost
    }

    /// The id from the handshake; equals the call's `gitaly-sidechannel-id`.
    public var id: Int64
    public var yamuxStreamID: UInt32
    public var openTime: UInt64
    public var endTime: UInt64 = 0
    public var end: End = .connectionLost
    /// Bytes after the handshake, client → Gitaly (the request: pkt-lines ending in `0000`).
    public var bytesToServer = 0
    /// Bytes after the handshake, Gitaly → client (the response: pack data, or SSH stdout/stderr bands).
    public var bytesToClient = 0
    /// When the client sent its final `0000` (done sending), if it did.
    public var clientDoneTime: UInt64?
    /// When the last payload byte towards Gitaly was seen (the client's side of the transfer ends here).
    public var lastToServerTime: UInt64?
    /// When the first and the last payload byte towards the client were seen (Gitaly's answer: pack or output).
    public var firstToClientTime: UInt64?
    public var lastToClientTime: UInt64?
    /// Gitaly → client payload bytes per pkt-line band (index 1 = pack data / stdout, 2 = progress / stderr,
    /// 3 = error); index 0 counts pkt-lines without a band byte. Nil once the stream stopped parsing as pkt-lines.
    public var serverBands: [Int]? = [0, 0, 0, 0]

    public init(id: Int64, yamuxStreamID: UInt32, openTime: UInt64) {
        self.id = id
        self.yamuxStreamID = yamuxStreamID
        self.openTime = openTime
    }
}

/// Follows pkt-line framing (4 hex digits of length including themselves, `0000` flush, `0001` delim,
/// `0002` response end) across arbitrary splits, counting payload bytes per band.
struct PktLineCounter: Sendable {
    enum Event { case flush }

    private var header: [UInt8] = []
    private var remaining = 0
    private var band: Int = -1
    private(set) var bands = [0, 0, 0, 0]
    private(set) var valid = true
    /// Whether the first payload byte of each line is a band number (server side) or plain data.
    let banded: Bool

    init(banded: Bool) { self.banded = banded }

    /// Consumes `piece`; `onFlush` is called for each `0000`.
    mutating func feed(_ piece: ByteBuffer, onFlush: () -> Void) {
        guard valid else { return }
        var piece = piece
        while piece.readableBytes > 0 {
            if remaining > 0 {
                if band < 0 {
                    let b = piece.readInteger(as: UInt8.self)!
                    remaining -= 1
                    band = banded && (1...3).contains(b) ? Int(b) : 0
                    if band == 0 { bands[0] += 1 }
                    continue
                }
                let n = min(remaining, piece.readableBytes)
                piece.moveReaderIndex(forwardBy: n)
                remaining -= n
                bands[band] += n
                continue
            }
            while header.count < 4, let b = piece.readInteger(as: UInt8.self) { header.append(b) }
            guard header.count == 4 else { return }
            var length = 0
            for c in header {
                guard let v = PercentDecoding.hexValue(c) else {
                    valid = false
                    return
                }
                length = length << 4 | Int(v)
            }
            header.removeAll(keepingCapacity: true)
            switch length {
            case 0: onFlush()
            case 1, 2: break
            case 3:
                valid = false
                return
            default:
                remaining = length - 4
                band = -1
            }
        }
    }
}
