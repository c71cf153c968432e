import Foundation
import NIOCore
import NIOPosix

/// A child process of the benchmark (upstream, tap, nghttpx, HAProxy) with its resource counters.
final class Child {
    let name: String
    let process: Process

    init(name: String, executable: String, arguments: [String], log: String, environment: [String: String]? = nil) throws {
        self.name = name
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    /// User + system CPU seconds, from /proc/<pid>/stat.
    func cpuSeconds() -> Double { ProcStat.cpuSeconds(pid: pid) }
    /// User + system CPU seconds of the threads named `NIO-ELT-…` (SwiftNIO's event loops: for the tap, the
    /// forwarding and decoding; its other threads build and write spans and recordings).
    func eventLoopCPUSeconds() -> Double { ProcStat.threadCPUSeconds(pid: pid, namePrefix: "NIO-ELT") }
    /// Resident set size in bytes, from /proc/<pid>/status.
    func rssBytes() -> Int { ProcStat.statusField(pid: pid, "VmRSS") }
}

enum ProcStat {
    static let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func cpuSeconds(pid: Int32) -> Double {
        cpuSeconds(statFile: "/proc/\(pid)/stat")
    }

    /// CPU seconds of the threads of `pid` whose name starts with `namePrefix`.
    static func threadCPUSeconds(pid: Int32, namePrefix: String) -> Double {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.reduce(0) { total, task in
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8)) ?? ""
            return comm.hasPrefix(namePrefix) ? total + cpuSeconds(statFile: "/proc/\(pid)/task/\(task)/stat") : total
        }
    }

    private static func cpuSeconds(statFile: String) -> Double {
        guard let text = try? String(contentsOfFile: statFile, encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return 0 }
        // Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / ticks
    }

    /// A `kB` field of /proc/<pid>/status, in bytes.
    static func statusField(pid: Int32, _ name: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            let number = line.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) } ?? 0
            return number * 1024
        }
        return 0
    }

    static func loadAverage() -> String {
        (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?
            .split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
    }
}

/// Waits until something accepts connections at `endpoint`.
func waitForListener(_ endpoint: Endpoint, on loop: EventLoop, timeout: Double = 20) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let bootstrap = ClientBootstrap(group: loop)
        let attempt: EventLoopFuture<Channel>
        switch endpoint {
        case .unix(let path): attempt = bootstrap.connect(unixDomainSocketPath: path)
        case .tcp(let port): attempt = bootstrap.connect(host: "127.0.0.1", port: port)
        }
        if let channel = try? attempt.wait() {
            try? channel.close().wait()
            return
        }
        if Date() > deadline { throw CallFailure(description: "nothing listens on \(endpoint) after \(timeout) s") }
        usleep(50_000)
    }
}

/// Connections that send the HTTP/2 preface and an empty SETTINGS frame, then stay idle (for RSS per connection).
enum IdleConnections {
    static func open(_ count: Int, to endpoint: Endpoint, group: EventLoopGroup) throws -> [Channel] {
        var preface = ByteBuffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        preface.writeBytes([0, 0, 0, 0x04, 0, 0, 0, 0, 0])  // SETTINGS, empty
        var channels: [Channel] = []
        channels.reserveCapacity(count)
        let bootstrap = ClientBootstrap(group: group)
        for _ in 0..<count {
            let channel: Channel
            switch endpoint {
            case .unix(let path): channel = try bootstrap.connect(unixDomainSocketPath: path).wait()
            case .tcp(let port): channel = try bootstrap.connect(host: "127.0.0.1", port: port).wait()
            }
            channel.writeAndFlush(preface, promise: nil)
            channels.append(channel)
        }
        return channels
    }
}
