import Synchronization
import TapTrace

#if canImport(Glibc)
import Glibc
#endif

/// Writes spans as JSON lines (DESIGN.md's span-log format) to a file or standard output.
///
/// Lines are buffered and written in blocks on `flush()` or when the buffer passes 64 KiB.
public final class SpanLogWriter: SpanSink {
    /// Why the log cannot be opened, phrased for the user.
    public struct OpenError: Error, CustomStringConvertible {
        public var description: String
    }

    private struct State: ~Copyable {
        var fd: Int32
        var buffer = JSONBytes(capacity: 80 * 1024)
        var failed = false
        var keyOrder = SpanJSONEncoder.KeyOrderCache()
    }

    private let state: Mutex<State>
    private let ownsDescriptor: Bool
    /// Where the spans go, for log lines.
    public let destination: String

    /// Opens `path` for appending (created with mode 0644), or standard output for `-`.
    public init(path: String) throws(OpenError) {
        destination = path
        if path == "-" {
            state = Mutex(State(fd: STDOUT_FILENO))
            ownsDescriptor = false
        } else {
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                throw OpenError(description: "cannot open span log '\(path)': \(reason); check the directory exists and is writable")
            }
            state = Mutex(State(fd: fd))
            ownsDescriptor = true
        }
    }

    deinit {
        flush()
        if ownsDescriptor { state.withLock { _ = close($0.fd) } }
    }

    public func write(_ span: Span) {
        let needsFlush = state.withLock { state in
            // Encoded straight into the write buffer: no intermediate String or copy per span.
            SpanJSONEncoder.encode(span, into: &state.buffer, cache: &state.keyOrder)
            state.buffer.byte(UInt8(ascii: "\n"))
            return state.buffer.count >= 64 * 1024
        }
        if needsFlush { flush() }
    }

    public func flush() {
        state.withLock { state in
            guard !state.buffer.isEmpty, !state.failed else {
                state.buffer.removeAll()
                return
            }
            let fd = state.fd
            let written = state.buffer.withUnsafeBytes { raw -> Bool in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return false
                    }
                    offset += n
                }
                return true
            }
            if !written { state.failed = true }
            state.buffer.removeAll()
        }
    }
}
