import ArgumentParser
import TapRecord
import TapServer

#if canImport(Glibc)
    import Glibc
#endif

/// `proxy` options of `--record` (docs/recording.md).
struct RecordingArguments: ParsableArguments {
    @Option(
        name: .customLong("record"),
        help: "Record the session to this file (mode 0600; later files FILE.1, FILE.2, ...).")
    var path: String?

    @Option(help: "Payload bytes stored per gRPC message; longer messages keep their length and first bytes.")
    var recordMaxMessageBytes: Int = RecordingLimits().maxMessageBytes

    @Option(help: "Bytes stored per sidechannel and direction; the rest is counted.")
    var recordMaxSidechannelBytes: Int = RecordingLimits().maxSidechannelBytes

    @Option(help: "Size at which a recording file is closed and the next one started.")
    var recordMaxFileBytes: UInt64 = RecordingLimits().maxFileBytes

    @Option(help: "Files per recording; when the last is full, recording stops (traffic goes on).")
    var recordMaxFiles: Int = RecordingLimits().maxFiles

    @Option(help: "Payload bytes that may wait for the recording's writer; past it recording stops (traffic goes on).")
    var recordMaxQueueBytes: Int = 64 << 20

    @Flag(help: "Also withhold personal metadata (username, user_id, remote_ip, key_id, ...) from the recording.")
    var redact = false

    func options() throws -> RecordingOptions? {
        guard let path else {
            if redact { throw fail("--redact applies to --record: give --record FILE too") }
            return nil
        }
        guard recordMaxMessageBytes >= 0, recordMaxSidechannelBytes >= 0 else {
            throw fail("--record-max-message-bytes and --record-max-sidechannel-bytes must not be negative")
        }
        guard recordMaxFileBytes >= 64 * 1024 else {
            throw fail("--record-max-file-bytes must be at least 65536")
        }
        guard recordMaxFiles >= 1 else { throw fail("--record-max-files must be at least 1") }
        var limits = RecordingLimits()
        limits.maxMessageBytes = recordMaxMessageBytes
        limits.maxSidechannelBytes = recordMaxSidechannelBytes
        limits.maxFileBytes = recordMaxFileBytes
        limits.maxFiles = recordMaxFiles
        limits.redactPersonal = redact
        guard recordMaxQueueBytes >= 1 else { throw fail("--record-max-queue-bytes must be positive") }
        var options = RecordingOptions(path: path, limits: limits)
        options.maxQueuedBytes = recordMaxQueueBytes
        // A slow disk on demand, for tests of recording under pressure (docs/recording.md).
        if let text = getenv("GITALY_TAP_RECORD_BLOCK_DELAY_MS").map({ String(cString: $0) }), let ms = Int(text),
            ms > 0
        {
            options.blockDelay = .milliseconds(ms)
        }
        return options
    }
}

extension RecordingArguments {
    /// The recording settings as configuration-file lines (for `proxy --check`).
    var effectiveSettings: [String] {
        guard let path else { return [] }
        return [
            "record = \"\(path)\"", "record_max_message_bytes = \(recordMaxMessageBytes)",
            "record_max_sidechannel_bytes = \(recordMaxSidechannelBytes)",
            "record_max_file_bytes = \(recordMaxFileBytes)",
            "record_max_files = \(recordMaxFiles)", "record_max_queue_bytes = \(recordMaxQueueBytes)",
            "redact = \(redact)",
        ]
    }
}
