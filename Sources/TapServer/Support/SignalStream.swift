import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Delivers SIGINT and SIGTERM as an async sequence instead of killing the process.
public enum SignalStream {
    /// A stream of termination signal numbers; the default action of those signals is turned off.
    public static func termination() -> AsyncStream<Int32> {
        AsyncStream { continuation in
            var sources: [any DispatchSourceSignal] = []
            for sig in [SIGINT, SIGTERM] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { continuation.yield(sig) }
                source.resume()
                sources.append(source)
            }
            // Dispatch sources are thread-safe; they are only cancelled from here.
            nonisolated(unsafe) let held = sources
            continuation.onTermination = { _ in held.forEach { $0.cancel() } }
        }
    }
}
