import Foundation
import NIOPosix
import Testing
import TapServer

/// Where the repository and its installed test peers live.
enum Peers {
    /// The repository root, from this file's path.
    static let repo: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var python: String { repo.appendingPathComponent(".peers/venv/bin/python").path }
    static func script(_ name: String) -> String { repo.appendingPathComponent("Tests/Peers/\(name)").path }

    /// The peers must be installed; a missing peer fails the test, it never skips it.
    static func requirePython() throws {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw PeerError("test peers are not installed (\(python) missing): run scripts/install-peers.sh")
        }
    }

    /// The built `gitaly-tap` executable (built by `swift build` before the tests run).
    static func tapExecutable() throws -> String {
        for config in ["debug", "release"] {
            let path = repo.appendingPathComponent(".build/\(config)/gitaly-tap").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw PeerError("gitaly-tap executable not found under .build/: run swift build first")
    }
}

struct PeerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A short temporary directory (unix socket paths must stay under 108 bytes), removed by `cleanup()`.
final class TempDir: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/gtap-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw PeerError("mkdtemp failed") }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A long-running peer process (server), stopped with `stop()`.
final class PeerProcess: @unchecked Sendable {
    let process = Process()
    let stdoutPath: String
    let stderrPath: String

    /// Starts `executable` with `arguments`, stdout/stderr into files in `dir`.
    init(_ executable: String, _ arguments: [String], dir: TempDir, name: String, environment: [String: String]? = nil)
        throws
    {
        stdoutPath = dir.file("\(name).out")
        stderrPath = dir.file("\(name).err")
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// Waits for a stdout line starting with `READY`; fails with the peer's stderr if it exits first.
    func waitReady(timeout: Duration = .seconds(60)) async throws -> String {
        try await waitFor(timeout: timeout, what: "READY line") {
            stdout.split(separator: "\n").first { $0.hasPrefix("READY") }.map(String.init)
        }
    }

    /// Waits until `path` exists and, when it is a unix socket, accepts connections: a peer's socket file appears at
    /// `bind`, before its `listen`, and a connection made in between is refused.
    func waitForFile(_ path: String, timeout: Duration = .seconds(60)) async throws {
        _ = try await waitFor(timeout: timeout, what: "\(path) to appear") { () -> Bool? in
            guard FileManager.default.fileExists(atPath: path) else { return nil }
            var info = stat()
            guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return true }
            return Self.isListening(path) ? true : nil
        }
    }

    /// True when the kernel lists a listening unix socket bound to `path` (/proc/net/unix: Flags has __SO_ACCEPTCON).
    /// Looked up without connecting, so the peer sees no extra connection. Read to its end through a file handle:
    /// `String(contentsOfFile:)` stops after the first 4 KiB of a /proc file, about 45 sockets, and a clean-clone CI
    /// run with many peers up at once then never saw the tap's socket listen.
    static func isListening(_ path: String) -> Bool {
        guard let data = FileHandle(forReadingAtPath: "/proc/net/unix").flatMap({ try? $0.readToEnd() }) else {
            return true
        }
        let table = String(decoding: data, as: UTF8.self)
        return table.split(separator: "\n").dropFirst().contains { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 8, fields[7] == path, let flags = UInt32(fields[3], radix: 16) else { return false }
            // Datagram sockets (type 0002) never listen: bound is ready.
            return fields[4] == "0002" || flags & 0x10000 != 0
        }
    }

    private func waitFor<T>(timeout: Duration, what: String, _ probe: () -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let value = probe() { return value }
            if !process.isRunning {
                throw PeerError("\(process.executableURL!.lastPathComponent) exited (\(process.terminationStatus)) before \(what): \(stderr.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PeerError("timed out waiting for \(what); stderr: \(stderr.suffix(2000))")
    }

    func signal(_ sig: Int32) {
        if process.isRunning { kill(process.processIdentifier, sig) }
    }

    func stop() {
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while !exited, Date() < deadline { usleep(10_000) }
        if !exited { signal(SIGKILL) }
        process.waitUntilExit()
    }

    /// True once the process is gone or a zombie; Foundation's `isRunning` can lag behind by seconds.
    var exited: Bool {
        guard process.processIdentifier > 0,
            let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        let state = stat[stat.index(close, offsetBy: 2)]
        return state == "Z" || state == "X"
    }
}

/// The result of a command run to completion.
struct CommandResult: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a command to completion on a thread of its own (never blocking the cooperative pool).
func runCommand(_ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdin: Data? = nil)
    async throws -> CommandResult
{
    try await NIOThreadPool.singleton.runIfActive {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = stdin == nil ? FileHandle.nullDevice : input
        try process.run()
        if let stdin {
            input.fileHandleForWriting.write(stdin)
            try? input.fileHandleForWriting.close()
        }
        // Read both pipes concurrently so neither fills up.
        let errData = LockedData()
        let errThread = Thread { errData.set(PipeReading.readAll(err.fileHandleForReading)) }
        errThread.start()
        let outData = PipeReading.readAll(out.fileHandleForReading)
        process.waitUntilExit()
        while !errData.done { usleep(1000) }
        return CommandResult(
            status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData.value, as: UTF8.self))
    }
}

private final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var finished = false
    func set(_ d: Data) {
        lock.lock()
        data = d
        finished = true
        lock.unlock()
    }
    var done: Bool {
        lock.lock()
        defer { lock.unlock() }
        return finished
    }
    var value: Data {
        lock.lock()
        defer { lock.unlock() }
        return data
    }
}
