import Foundation
import Logging
import Synchronization

/// A log handler that keeps every entry, so tests can check what the tap told the operator.
struct CapturingLogHandler: LogHandler {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]

        /// The message and its metadata as one searchable line.
        var line: String { "\(level) \(message) " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
    }

    final class Store: Sendable {
        let entries = Mutex<[Entry]>([])
        var all: [Entry] { entries.withLock { $0 } }
        var lines: [String] { all.map(\.line) }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        for (key, value) in event.metadata ?? [:] { merged[key] = value }
        let entry = Entry(
            level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" })
        store.entries.withLock { $0.append(entry) }
    }

    /// A logger writing into a fresh store.
    static func logger(level: Logger.Level = .info) -> (Logger, Store) {
        let store = Store()
        var logger = Logger(label: "tap-test") { _ in CapturingLogHandler(store: store) }
        logger.logLevel = level
        return (logger, store)
    }
}
