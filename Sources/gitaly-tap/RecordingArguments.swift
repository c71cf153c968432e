import ArgumentParser
import TapRecord
import TapServer

/// `proxy` options of `--record` (docs/recording.md).
struct RecordingArguments: ParsableArguments {
    @Option(name: .customLong("record"), help: "Record the session to this file (mode 0600; later files FILE.1, FILE.2, ...).")
    var path: String?

    @Option(help: "Payload bytes stored per gRPC message; longer messages keep their length and first bytes.")
    var recordMaxMessageBytes: Int = RecordingLimits().maxMessageBytes

    @Option(help: "Bytes stored per sidechannel and direction; the rest is counted.")
    var recordMaxSidechannelBytes: Int = RecordingLimits().maxSidechannelBytes

    @Option(help: "Size at which a recording file is closed and the next one started.")
    var recordMaxFileBytes: UInt64 = RecordingLimits().maxFileBytes

    @Option(help: "Files per recording; when the last is full, recording stops (traffic goes on).")
    var recordMaxFiles: Int = RecordingLimits().maxFiles

    @Flag(help: "Also withhold personal metadata (username, user_id, remote_ip, key_id, ...) from the recording.")
    var redact = false

    func options() throws -> RecordingOptions? {
        guard let path else {
            if redact { throw ValidationError("--redact applies to --record: give --record FILE too") }
            return nil
        }
        guard recordMaxMessageBytes >= 0, recordMaxSidechannelBytes >= 0 else {
            throw ValidationError("--record-max-message-bytes and --record-max-sidechannel-bytes must not be negative")
        }
        guard recordMaxFileBytes >= 64 * 1024 else { throw ValidationError("--record-max-file-bytes must be at least 65536") }
        guard recordMaxFiles >= 1 else { throw ValidationError("--record-max-files must be at least 1") }
        var limits = RecordingLimits()
        limits.maxMessageBytes = recordMaxMessageBytes
        limits.maxSidechannelBytes = recordMaxSidechannelBytes
        limits.maxFileBytes = recordMaxFileBytes
        limits.maxFiles = recordMaxFiles
        limits.redactPersonal = redact
        return RecordingOptions(path: path, limits: limits)
    }
}
