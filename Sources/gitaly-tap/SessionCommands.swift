import ArgumentParser
import TapRecord
import TapServer

#if canImport(Glibc)
import Glibc
#endif

/// Writes `text` to standard output in full.
func writeStdout(_ text: String) {
    var bytes = Array(text.utf8)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = Glibc.write(STDOUT_FILENO, raw.baseAddress! + offset, raw.count - offset)
            if n <= 0 { if errno == EINTR { continue } else { return } }
            offset += n
        }
    }
}

/// Loads a recording or fails with one line.
func loadRecording(_ path: String) throws -> RecordedSession {
    do {
        return try RecordedSession.load(path: path)
    } catch {
        throw fail(error.description)
    }
}

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarise a recording (calls per method, statuses, sizes, durations) or export it as JSON lines."
    )

    @Argument(help: "The recording (its first file; later files are followed).")
    var file: String

    @Flag(help: "Print every call and message as JSON lines (payloads base64) instead of the summary.")
    var json = false

    func run() async throws {
        let session = try loadRecording(file)
        if json {
            var chunk = ""
            SessionReport.jsonLines(session) { line in
                chunk += line
                chunk += "\n"
                if chunk.utf8.count > 1 << 20 {
                    writeStdout(chunk)
                    chunk = ""
                }
            }
            writeStdout(chunk)
        } else {
            writeStdout(SessionReport.summary(session, path: file))
        }
    }
}
