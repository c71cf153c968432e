import NIOCore

/// The 9-byte header in front of every HTTP/2 frame (RFC 9113 §4.1).
public struct HTTP2FrameHeader: Sendable, Hashable {
    /// Payload length in bytes (24 bits on the wire).
    public var length: Int
    public var type: HTTP2FrameType
    public var flags: UInt8
    /// Stream identifier with the reserved bit cleared.
    public var streamID: UInt32

    public init(length: Int, type: HTTP2FrameType, flags: UInt8, streamID: UInt32) {
        self.length = length
        self.type = type
        self.flags = flags
        self.streamID = streamID
    }

    /// Size of the encoded header.
    public static let size = 9

    /// Whether `flag` is set on this frame.
    public func has(_ flag: HTTP2FrameFlag) -> Bool { flags & flag.rawValue != 0 }
}

/// HTTP/2 frame types; unknown types are kept so they can be skipped as RFC 9113 requires.
public struct HTTP2FrameType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let data = HTTP2FrameType(rawValue: 0x0)
    public static let headers = HTTP2FrameType(rawValue: 0x1)
    public static let priority = HTTP2FrameType(rawValue: 0x2)
    public static let rstStream = HTTP2FrameType(rawValue: 0x3)
    public static let settings = HTTP2FrameType(rawValue: 0x4)
    public static let pushPromise = HTTP2FrameType(rawValue: 0x5)
    public static let ping = HTTP2FrameType(rawValue: 0x6)
    public static let goAway = HTTP2FrameType(rawValue: 0x7)
    public static let windowUpdate = HTTP2FrameType(rawValue: 0x8)
    public static let continuation = HTTP2FrameType(rawValue: 0x9)

    public var description: String {
        switch self {
        case .data: "DATA"
        case .headers: "HEADERS"
        case .priority: "PRIORITY"
        case .rstStream: "RST_STREAM"
        case .settings: "SETTINGS"
        case .pushPromise: "PUSH_PROMISE"
        case .ping: "PING"
        case .goAway: "GOAWAY"
        case .windowUpdate: "WINDOW_UPDATE"
        case .continuation: "CONTINUATION"
        default: "UNKNOWN(0x\(String(rawValue, radix: 16)))"
        }
    }
}

/// Frame flags used by the decoder.
public struct HTTP2FrameFlag: Sendable, Hashable {
    public var rawValue: UInt8

    public static let endStream = HTTP2FrameFlag(rawValue: 0x1)
    public static let ack = HTTP2FrameFlag(rawValue: 0x1)
    public static let endHeaders = HTTP2FrameFlag(rawValue: 0x4)
    public static let padded = HTTP2FrameFlag(rawValue: 0x8)
    public static let priority = HTTP2FrameFlag(rawValue: 0x20)
}

/// The client connection preface (RFC 9113 §3.4).
public enum HTTP2Preface {
    /// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
    public static let bytes: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
}

/// HTTP/2 error codes (RFC 9113 §7), named for logs and spans.
public enum HTTP2ErrorCode {
    /// The registered name of `code`, or its hex value.
    public static func name(_ code: UInt32) -> String {
        switch code {
        case 0x0: "NO_ERROR"
        case 0x1: "PROTOCOL_ERROR"
        case 0x2: "INTERNAL_ERROR"
        case 0x3: "FLOW_CONTROL_ERROR"
        case 0x4: "SETTINGS_TIMEOUT"
        case 0x5: "STREAM_CLOSED"
        case 0x6: "FRAME_SIZE_ERROR"
        case 0x7: "REFUSED_STREAM"
        case 0x8: "CANCEL"
        case 0x9: "COMPRESSION_ERROR"
        case 0xA: "CONNECT_ERROR"
        case 0xB: "ENHANCE_YOUR_CALM"
        case 0xC: "INADEQUATE_SECURITY"
        case 0xD: "HTTP_1_1_REQUIRED"
        default: "0x" + String(code, radix: 16)
        }
    }
}
