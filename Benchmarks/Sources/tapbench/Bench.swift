import Foundation
import NIOCore
import NIOPosix

struct BenchOptions {
    var tap = "../.build/release/gitaly-tap"
    /// Another gitaly-tap build to run side by side (path name `tap-base`), e.g. the build before an optimization.
    var baselineTap: String?
    var label = "latest"
    var markdown: String?
    var calls = 20_000
    var streamMiB = 1024
    var streamMessage = 256 << 10
    var windowSeconds = 1.0
    var rounds = 2
    var mixRounds = 5
    var mixSmallCount = 5000
    var mixSmallSize = 200
    var mixTail = 32 << 20
    var idleConnections = 1000
    var unaryPayload = 32
    /// Calls per h2load run (0: skip h2load).
    var h2loadRequests = 30_000
    /// Path names to run (default: all available).
    var only: Set<String>?
    var transports = ["unix", "tcp"]
    var command = ""
}

/// One way from the client to the upstream.
final class BenchPath {
    let name: String
    let transport: String
    let endpoint: Endpoint
    /// The proxy process in the middle, if any.
    let child: Child?
    var connections: [BenchConnection] = []
    // Results.
    var latency: [UInt64] = []
    var rates: [Int: Double] = [:]
    /// h2load unary calls/s over TCP (64 streams over 8 connections) and the proxy's CPU µs per call there.
    var h2loadRate: Double?
    var h2loadCPU: Double?
    /// The part of `h2loadCPU` spent on event-loop threads (nil for proxies that have none).
    var h2loadEventLoopCPU: Double?
    /// The proxy's CPU microseconds per call, per concurrency level.
    var cpuPerCall: [Int: Double] = [:]
    var download: Double = 0
    var upload: Double = 0
    var cpuPerGiB: Double?
    var peakRSS: Int = 0
    var rssAtQuarter: Int = 0
    var rssAtEnd: Int = 0
    var mixMillis: [Double] = []
    var rssStart: Int = 0
    var rssIdle: Int = 0
    var rssWithIdle: Int = 0

    init(name: String, transport: String, endpoint: Endpoint, child: Child?) {
        self.name = name
        self.transport = transport
        self.endpoint = endpoint
        self.child = child
    }

    var label: String { "\(transport) \(name)" }
}

/// Samples a process's RSS every 10 ms on a background thread.
final class RSSSampler {
    private let pid: Int32
    private let lock = NSLock()
    private var samples: [Int] = []
    private var running = true
    private var thread: Thread?

    init(pid: Int32) {
        self.pid = pid
        let thread = Thread { [self] in
            while true {
                let rss = ProcStat.statusField(pid: pid, "VmRSS")
                lock.lock()
                samples.append(rss)
                let go = running
                lock.unlock()
                if !go { break }
                usleep(10_000)
            }
        }
        self.thread = thread
        thread.start()
    }

    func stop() -> [Int] {
        lock.lock()
        running = false
        lock.unlock()
        usleep(20_000)
        lock.lock()
        defer { lock.unlock() }
        return samples
    }
}

final class Bench {
    let options: BenchOptions
    let work: String
    let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var loop: EventLoop { clientGroup.next() }
    var children: [Child] = []
    var paths: [BenchPath] = []
    var recordingAvailable = false
    /// Per transport: how much the tap+record path wrote and whether its recording stopped during the run.
    var recordingOutcome: [String] = []
    let portBase: Int
    var loadBefore = ""

    init(options: BenchOptions) {
        self.options = options
        work = "/tmp/tapbench-\(getpid())"
        // Below Linux's ephemeral range (32768 and up by default): a port there can be taken at any moment as the
        // local end of some outgoing connection, and the upstream's bind then fails with "address already in use".
        portBase = 20000 + Int(getpid() % 1500) * 8
    }

    func log(_ text: String) {
        let stamp = String(format: "%7.1f", Double(nowNanos() / 1_000_000) / 1000)
        print("[\(stamp)] \(text)")
    }

    func run() throws {
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer {
            for child in children.reversed() { child.stop() }
            try? clientGroup.syncShutdownGracefully()
        }
        loadBefore = ProcStat.loadAverage()
        try startAll()
        try connectAll()
        try runSequential()
        try runConcurrent()
        try runH2load()
        try runStreams()
        try runMix()
        try runIdle()
        let loadAfter = ProcStat.loadAverage()
        recordingOutcome = recordingSummary()
        let report = Report(options: options, paths: paths, recordingAvailable: recordingAvailable,
                            recordingOutcome: recordingOutcome,
                            loadBefore: loadBefore, loadAfter: loadAfter).markdown()
        print("\n" + report)
        if let file = options.markdown {
            try Report.store(report, label: options.label, in: file)
            log("written to \(file) (section \(options.label))")
        }
        // Span logs of a full run are hundreds of MB; keep the work directory only when a run fails.
        for child in children.reversed() { child.stop() }
        try? FileManager.default.removeItem(atPath: work)
    }

    /// What each tap+record path wrote (file bytes) and any "recording stopped" line from its log: a recording
    /// that stopped part-way would make the tap+record figures those of a tap without recording.
    func recordingSummary() -> [String] {
        paths.filter { $0.name == "tap+record" }.map { path in
            for child in children where child.name == "taprec-\(path.transport)" { child.stop() }
            let files = (try? FileManager.default.contentsOfDirectory(atPath: work)) ?? []
            let bytes = files.filter { $0.hasPrefix("record-\(path.transport).tap") }.reduce(0) { sum, name in
                let size = (try? FileManager.default.attributesOfItem(atPath: "\(work)/\(name)")[.size]) as? Int
                return sum + (size ?? 0)
            }
            let log = (try? String(contentsOfFile: "\(work)/taprec-\(path.transport).log", encoding: .utf8)) ?? ""
            let stopped = log.split(separator: "\n").filter { $0.contains("recording stopped") }
            let outcome = stopped.isEmpty
                ? "recording ran to the end"
                : "RECORDING STOPPED during the run (\(stopped[0].trimmingCharacters(in: .whitespaces)))"
            return "\(path.transport): \(Report.mib(bytes)) MiB recorded in \(files.filter { $0.hasPrefix("record-\(path.transport).tap") }.count) file(s); \(outcome)"
        }
    }

    // MARK: Processes

    func selfExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    func wanted(_ name: String) -> Bool { options.only.map { $0.contains(name) || name == "direct" } ?? true }

    func startAll() throws {
        let upstreamSock = "\(work)/up.sock"
        let upstreamPort = portBase
        let upstream = try Child(
            name: "upstream", executable: selfExecutable(),
            arguments: ["upstream", "--unix", upstreamSock, "--port", "\(upstreamPort)", "--threads", "2"],
            log: "\(work)/upstream.log")
        children.append(upstream)
        try waitForListener(.unix(upstreamSock), on: loop)
        try waitForListener(.tcp(upstreamPort), on: loop)

        let help = try shell(options.tap, ["proxy", "--help"])
        recordingAvailable = help.contains("--record")
        log("tap: \(options.tap); recording \(recordingAvailable ? "available" : "not available (no --record)")")

        var port = portBase + 1
        for transport in options.transports {
            let unix = transport == "unix"
            let upstreamAddress = unix ? "unix:\(upstreamSock)" : "tcp://127.0.0.1:\(upstreamPort)"
            func endpoint(_ tag: String) -> Endpoint {
                if unix { return .unix("\(work)/\(tag).sock") }
                port += 1
                return .tcp(port)
            }
            func address(_ endpoint: Endpoint) -> String { endpoint.description }

            paths.append(BenchPath(name: "direct", transport: transport,
                                   endpoint: unix ? .unix(upstreamSock) : .tcp(upstreamPort), child: nil))
            if wanted("tap") {
                let ep = endpoint("tap")
                let child = try Child(
                    name: "tap-\(transport)", executable: options.tap,
                    arguments: ["proxy", "--listen", address(ep), "--upstream", upstreamAddress,
                                "--spans", "\(work)/spans-\(transport).jsonl", "--log-level", "warning", "--log-format", "text"],
                    log: "\(work)/tap-\(transport).log")
                children.append(child)
                paths.append(BenchPath(name: "tap", transport: transport, endpoint: ep, child: child))
            }
            if let baseline = options.baselineTap, wanted("tap-base") {
                let ep = endpoint("tapbase")
                let child = try Child(
                    name: "tapbase-\(transport)", executable: baseline,
                    arguments: ["proxy", "--listen", address(ep), "--upstream", upstreamAddress,
                                "--spans", "\(work)/spans-base-\(transport).jsonl", "--log-level", "warning", "--log-format", "text"],
                    log: "\(work)/tapbase-\(transport).log")
                children.append(child)
                paths.append(BenchPath(name: "tap-base", transport: transport, endpoint: ep, child: child))
            }
            if recordingAvailable, wanted("tap+record") {
                let ep = endpoint("taprec")
                let child = try Child(
                    name: "taprec-\(transport)", executable: options.tap,
                    arguments: ["proxy", "--listen", address(ep), "--upstream", upstreamAddress,
                                "--spans", "\(work)/spans-rec-\(transport).jsonl",
                                "--record", "\(work)/record-\(transport).tap", "--drain-timeout", "1",
                                "--log-level", "warning", "--log-format", "text"],
                    log: "\(work)/taprec-\(transport).log")
                children.append(child)
                paths.append(BenchPath(name: "tap+record", transport: transport, endpoint: ep, child: child))
            }
            if wanted("nghttpx") {
                let ep = endpoint("ngx")
                let frontend: String
                switch ep {
                case .unix(let path): frontend = "unix:\(path)"
                case .tcp(let p): frontend = "127.0.0.1,\(p)"
                }
                let backend = unix ? "unix:\(upstreamSock)" : "127.0.0.1,\(upstreamPort)"
                let conf = "\(work)/nghttpx-\(transport).conf"
                try """
                frontend=\(frontend);no-tls
                backend=\(backend);;proto=h2
                workers=2
                frontend-http2-window-size=\(H2Tuning.streamWindow)
                frontend-http2-connection-window-size=\(H2Tuning.connectionWindow)
                backend-http2-window-size=\(H2Tuning.streamWindow)
                backend-http2-connection-window-size=\(H2Tuning.connectionWindow)
                frontend-http2-max-concurrent-streams=1000
                backend-http2-max-concurrent-streams=1000
                worker-frontend-connections=4000
                errorlog-file=\(work)/nghttpx-\(transport).err
                pid-file=\(work)/nghttpx-\(transport).pid

                """.write(toFile: conf, atomically: true, encoding: .utf8)
                let child = try Child(name: "nghttpx-\(transport)", executable: "/usr/sbin/nghttpx",
                                      arguments: ["--conf=\(conf)", "--single-process"],
                                      log: "\(work)/nghttpx-\(transport).log")
                children.append(child)
                paths.append(BenchPath(name: "nghttpx", transport: transport, endpoint: ep, child: child))
            }
            if wanted("haproxy") {
                let ep = endpoint("hap")
                let bind: String
                switch ep {
                case .unix(let path): bind = "unix@\(path)"
                case .tcp(let p): bind = "127.0.0.1:\(p)"
                }
                let server = unix ? upstreamSock : "127.0.0.1:\(upstreamPort)"
                let conf = "\(work)/haproxy-\(transport).cfg"
                try """
                global
                    maxconn 5000
                defaults
                    mode tcp
                    timeout connect 5s
                    timeout client 10m
                    timeout server 10m
                listen relay
                    bind \(bind)
                    server upstream \(server)

                """.write(toFile: conf, atomically: true, encoding: .utf8)
                let child = try Child(name: "haproxy-\(transport)", executable: "/usr/sbin/haproxy",
                                      arguments: ["-db", "-f", conf], log: "\(work)/haproxy-\(transport).log")
                children.append(child)
                paths.append(BenchPath(name: "haproxy", transport: transport, endpoint: ep, child: child))
            }
        }
        for path in paths where path.child != nil {
            do {
                try waitForListener(path.endpoint, on: loop)
            } catch {
                throw CallFailure(description: "\(path.label) did not start (see \(work)/\(path.child!.name).log): \(error)")
            }
        }
        usleep(300_000)
        for path in paths { path.rssStart = path.child?.rssBytes() ?? 0 }
        log("started: " + paths.map(\.label).joined(separator: ", "))
    }

    func shell(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: Workloads

    func connectAll() throws {
        for path in paths {
            for _ in 0..<8 {
                path.connections.append(try BenchConnection.connect(to: path.endpoint, on: loop).wait())
            }
        }
        // Warm up every connection (HPACK tables, buffers, page faults).
        let request = unaryRequest()
        for path in paths {
            for connection in path.connections {
                _ = try Workloads.sequentialUnary([connection], callsPerPath: 50, request: request, on: loop).wait()
            }
        }
    }

    func unaryRequest() -> ByteBuffer { H2Tuning.message(size: options.unaryPayload, fill: 0x71) }

    func runSequential() throws {
        log("sequential unary: \(options.calls) calls per path, interleaved call by call over \(paths.count) paths")
        let samples = try Workloads.sequentialUnary(
            paths.map { $0.connections[0] }, callsPerPath: options.calls, request: unaryRequest(), on: loop
        ).wait()
        for (path, sample) in zip(paths, samples) { path.latency = sample.sorted() }
    }

    static let levels = [(streams: 1, connections: 1), (streams: 16, connections: 4), (streams: 64, connections: 8)]

    func runConcurrent() throws {
        let request = unaryRequest()
        for level in Self.levels {
            log("concurrent unary: \(level.streams) streams over \(level.connections) connections, \(options.rounds) rounds of \(options.windowSeconds) s per path")
            var calls = [Int](repeating: 0, count: paths.count)
            var nanos = [UInt64](repeating: 0, count: paths.count)
            var cpu = [Double](repeating: 0, count: paths.count)
            for round in 0..<(options.rounds * 2) {
                let order = round % 2 == 0 ? Array(paths.indices) : paths.indices.reversed()
                for index in order {
                    let cpuBefore = paths[index].child?.cpuSeconds() ?? 0
                    defer { cpu[index] += (paths[index].child?.cpuSeconds() ?? 0) - cpuBefore }
                    let result = try Workloads.concurrentUnary(
                        Array(paths[index].connections.prefix(level.connections)), streams: level.streams,
                        seconds: options.windowSeconds / 2, request: request, on: loop
                    ).wait()
                    calls[index] += result.calls
                    nanos[index] += result.nanos
                }
            }
            for index in paths.indices {
                paths[index].rates[level.streams] = Double(calls[index]) / (Double(nanos[index]) / 1e9)
                if paths[index].child != nil, calls[index] > 0 {
                    paths[index].cpuPerCall[level.streams] = cpu[index] / Double(calls[index]) * 1e6
                }
            }
        }
    }

    /// h2load (nghttp2's C load generator) as a second, faster unary client: TCP only (it cannot reach unix sockets).
    func runH2load() throws {
        guard options.h2loadRequests > 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/h2load") else { return }
        let tcpPaths = paths.filter { if case .tcp = $0.endpoint { return true } else { return false } }
        guard !tcpPaths.isEmpty else { return }
        let body = "\(work)/unary.bin"
        let request = unaryRequest()
        try Data(request.readableBytesView).write(to: URL(fileURLWithPath: body))
        log("h2load: \(options.h2loadRequests) unary calls per path and round, 8 connections x 8 streams, TCP")
        var calls = [Int](repeating: 0, count: tcpPaths.count)
        var seconds = [Double](repeating: 0, count: tcpPaths.count)
        var cpu = [Double](repeating: 0, count: tcpPaths.count)
        var eventLoopCPU = [Double](repeating: 0, count: tcpPaths.count)
        for round in 0..<2 {
            let order = round % 2 == 0 ? Array(tcpPaths.indices) : tcpPaths.indices.reversed()
            for index in order {
                guard case .tcp(let port) = tcpPaths[index].endpoint else { continue }
                let cpuBefore = tcpPaths[index].child?.cpuSeconds() ?? 0
                let eventLoopBefore = tcpPaths[index].child?.eventLoopCPUSeconds() ?? 0
                let start = nowNanos()
                let output = try shell("/usr/bin/h2load", [
                    "-n", "\(options.h2loadRequests)", "-c", "8", "-m", "8", "-t", "1", "-d", body,
                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "http://127.0.0.1:\(port)\(BenchMethod.unary.rawValue)",
                ])
                let elapsed = Double(nowNanos() - start) / 1e9
                cpu[index] += (tcpPaths[index].child?.cpuSeconds() ?? 0) - cpuBefore
                eventLoopCPU[index] += (tcpPaths[index].child?.eventLoopCPUSeconds() ?? 0) - eventLoopBefore
                // "requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, ..."
                // "finished in 1.23s, 16260.16 req/s, ..."
                guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("requests:") }),
                    let succeeded = line.split(separator: ",").first(where: { $0.hasSuffix("succeeded") })
                        .flatMap({ Int($0.split(separator: " ").first ?? "") }),
                    let finished = output.split(separator: "\n").first(where: { $0.hasPrefix("finished in") }),
                    let secs = Double(finished.dropFirst("finished in ".count).prefix { $0 != "s" && $0 != "m" })
                else {
                    throw CallFailure(description: "h2load output not understood:\n\(output)")
                }
                guard succeeded == options.h2loadRequests else {
                    throw CallFailure(description: "\(tcpPaths[index].label): h2load: only \(succeeded) of \(options.h2loadRequests) calls succeeded")
                }
                _ = elapsed
                calls[index] += succeeded
                seconds[index] += finished.contains("ms,") ? secs / 1000 : secs
            }
        }
        for index in tcpPaths.indices {
            tcpPaths[index].h2loadRate = Double(calls[index]) / seconds[index]
            if tcpPaths[index].child != nil { tcpPaths[index].h2loadCPU = cpu[index] / Double(calls[index]) * 1e6 }
            if eventLoopCPU[index] > 0 { tcpPaths[index].h2loadEventLoopCPU = eventLoopCPU[index] / Double(calls[index]) * 1e6 }
        }
    }

    func runStreams() throws {
        let bytes = options.streamMiB << 20
        let count = bytes / options.streamMessage
        let message = H2Tuning.message(size: options.streamMessage, fill: 0x63)
        log("streams: \(options.streamMiB) MiB server stream and client stream per path, \(options.streamMessage >> 10) KiB messages")
        for direction in ["down", "up"] {
            let order = direction == "down" ? Array(paths.indices) : paths.indices.reversed()
            for index in order {
                let path = paths[index]
                let cpuBefore = path.child?.cpuSeconds() ?? 0
                let sampler = path.child.map { RSSSampler(pid: $0.pid) }
                let kind: CallKind = direction == "down"
                    ? CallKind.downloadRequest(count: count, size: options.streamMessage, tailSize: 0)
                    : .upload(message: message, count: count)
                let result = try Workloads.transfer(path.connections[0], kind, on: loop).wait()
                let mibs = Double(bytes) / 1_048_576 / (Double(result.nanos) / 1e9)
                if direction == "down" {
                    guard result.bytes == count * (options.streamMessage + 5) else {
                        throw CallFailure(description: "\(path.label): server stream delivered \(result.bytes) bytes")
                    }
                    path.download = mibs
                } else {
                    path.upload = mibs
                }
                if let child = path.child {
                    let cpu = child.cpuSeconds() - cpuBefore
                    path.cpuPerGiB = (path.cpuPerGiB ?? 0) + cpu / (Double(bytes) / Double(1 << 30)) / 2
                }
                if let rss = sampler?.stop(), !rss.isEmpty {
                    path.peakRSS = max(path.peakRSS, rss.max() ?? 0)
                    if direction == "down" {
                        path.rssAtQuarter = rss[rss.count / 4]
                        path.rssAtEnd = rss[rss.count - 1]
                    }
                }
                log(String(format: "  %@ %@: %.0f MiB/s", path.label, direction, mibs))
            }
        }
    }

    func runMix() throws {
        log("clone-like mix: \(options.mixSmallCount) x \(options.mixSmallSize) B then \(options.mixTail >> 20) MiB, \(options.mixRounds) rounds per path")
        let kind = CallKind.downloadRequest(count: options.mixSmallCount, size: options.mixSmallSize, tailSize: options.mixTail)
        for round in 0..<options.mixRounds {
            let order = round % 2 == 0 ? Array(paths.indices) : paths.indices.reversed()
            for index in order {
                let result = try Workloads.transfer(paths[index].connections[1], kind, on: loop).wait()
                paths[index].mixMillis.append(Double(result.nanos) / 1e6)
            }
        }
    }

    func runIdle() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        for path in paths where path.child != nil {
            let before = path.child!.rssBytes()
            let channels = try IdleConnections.open(options.idleConnections, to: path.endpoint, group: group)
            usleep(1_500_000)
            path.rssWithIdle = path.child!.rssBytes()
            log("  \(path.label): RSS \(before >> 10) KiB -> \(path.rssWithIdle >> 10) KiB with \(channels.count) idle connections")
            path.rssIdle = before
            for channel in channels { channel.close(promise: nil) }
            usleep(500_000)
        }
    }
}
