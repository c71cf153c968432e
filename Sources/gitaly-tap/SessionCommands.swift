import ArgumentParser
import NIOPosix
import Synchronization
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
func loadRecording(_ path: String, keepPayloads: Bool = true) throws -> RecordedSession {
    do {
        return try RecordedSession.load(path: path, keepPayloads: keepPayloads)
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
        // The summary needs message sizes, not their bytes.
        let session = try loadRecording(file, keepPayloads: json)
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

struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Send a recording's calls to a Gitaly and compare its answers with the recorded ones (exit 0 only when all match)."
    )

    @Argument(help: "The recording (its first file; later files are followed).")
    var file: String

    @Option(help: "The Gitaly to send to: unix:/abs/path, tcp://host:port or tls://host:port.")
    var target: String

    @Option(help: "Pace: a multiple of the recorded pace (1 = as recorded, 2 = twice as fast), or max.")
    var rate: String = "1"

    @Option(help: "Calls in flight at once.")
    var concurrency: Int = 16

    @Option(help: "File holding Gitaly's shared secret: each call gets a fresh v2 authorization token.")
    var tokenFile: String?

    @Option(help: "Seconds a call may take before it is abandoned and reported.")
    var callTimeout: Int = 120

    @Option(help: "Seconds between progress lines on standard error while calls are answered (0: none).")
    var progress: Int = 5

    @Option(help: "CA bundle (PEM) that a tls:// --target certificate must chain to (default: the system store).")
    var tlsCa: String?

    @Option(help: "Name to verify in a tls:// --target certificate (default: the target host).")
    var tlsServerName: String?

    func run() async throws {
        var options: ReplayOptions
        do {
            options = ReplayOptions(target: try TapAddress(parsing: target))
        } catch {
            throw fail("--target: \(error)")
        }
        if rate == "max" {
            options.rate = nil
        } else if let r = Double(rate), r > 0, r.isFinite {
            options.rate = r
        } else {
            throw fail("--rate must be a positive number or max, not '\(rate)'")
        }
        guard concurrency >= 1 else { throw fail("--concurrency must be at least 1") }
        options.concurrency = concurrency
        options.callTimeout = .seconds(Int64(max(1, callTimeout)))
        options.tls.upstreamCAPath = tlsCa
        options.tls.upstreamServerName = tlsServerName
        if let tokenFile {
            guard let secret = readSecret(tokenFile) else { throw fail("--token-file: cannot read \(tokenFile)") }
            guard !secret.isEmpty else { throw fail("--token-file: \(tokenFile) is empty") }
            options.token = GitalyToken(secret: secret)
        }
        guard progress >= 0 else { throw fail("--progress must be 0 (off) or a number of seconds") }
        let session = try loadRecording(file)
        if progress > 0 { options.onAnswer = Self.progressLines(every: .seconds(progress)) }
        let group = MultiThreadedEventLoopGroup.singleton
        let outcomes: [ReplayOutcome]
        do {
            outcomes = try await SessionReplayer.run(session, options: options, group: group)
        } catch let error as ReplayError {
            throw fail(error.description)
        }
        writeStdout(
            ReplayReport.text(outcomes, file: file, target: target, rate: options.rate, concurrency: concurrency))
        if !ReplayReport.allMatched(outcomes) { throw ExitCode(1) }
    }
}

extension Replay {
    /// A progress line on standard error at most every `interval` (and for the last answer), e.g.
    /// `replay: 120 of 3400 calls answered (3 %), 65 s`.
    static func progressLines(every interval: Duration) -> @Sendable (Int, Int) -> Void {
        let clock = ContinuousClock()
        let start = clock.now
        let last = Mutex(start)
        return { answered, toSend in
            let now = clock.now
            let due = last.withLock { last -> Bool in
                guard now - last >= interval || answered == toSend else { return false }
                last = now
                return true
            }
            guard due else { return }
            let percent = toSend > 0 ? answered * 100 / toSend : 100
            let seconds = (now - start).components.seconds
            FileHandleStderr.write("replay: \(answered) of \(toSend) calls answered (\(percent) %), \(seconds) s\n")
        }
    }
}

/// The file's bytes without a trailing newline (secrets are often written with one).
func readSecret(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
        if n < 0 { if errno == EINTR { continue } else { return nil } }
        if n == 0 { break }
        out += chunk[0..<n]
    }
    while let last = out.last, last == 0x0A || last == 0x0D { out.removeLast() }
    return out
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A stand-in Gitaly: answer calls with a recording's answers (matched by method and request messages)."
    )

    @Argument(help: "The recording (its first file; later files are followed).")
    var file: String

    @Option(help: "Where clients connect: unix:/abs/path, tcp://host:port or tls://host:port.")
    var listen: String

    @Option(help: "Certificate chain (PEM) that clients see on a tls:// --listen address.")
    var tlsCert: String?

    @Option(help: "Private key (PEM) of --tls-cert.")
    var tlsKey: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "Log format: json, text, or auto (text on a terminal, else json).")
    var logFormat: String = "auto"

    func run() async throws {
        let logger = try makeLogger(level: logLevel, format: logFormat)
        let address: TapAddress
        do {
            address = try TapAddress(parsing: listen)
        } catch {
            throw fail("--listen: \(error)")
        }
        let session = try loadRecording(file)
        var tls = TLSSettings()
        tls.certificatePath = tlsCert
        tls.keyPath = tlsKey
        let server = StandInServer(
            session: session, listen: address, group: MultiThreadedEventLoopGroup.singleton, logger: logger, tls: tls)
        do {
            try await server.start()
        } catch let error as ProxyStartError {
            throw fail(error.description)
        }
        var signals = SignalStream.termination().makeAsyncIterator()
        _ = await signals.next()
        await server.stop()
    }
}
