import NIOCore

/// The workloads, driven from one client event loop (no thread hops inside a measurement).
enum Workloads {
    /// Sequential unary calls, interleaved call by call over `connections` (order 0,1,…,n-1,n-1,…,0, …).
    /// Returns the latency samples in nanoseconds, per connection.
    static func sequentialUnary(
        _ connections: [BenchConnection], callsPerPath: Int, request: ByteBuffer, on loop: EventLoop
    ) -> EventLoopFuture<[[UInt64]]> {
        let promise = loop.makePromise(of: [[UInt64]].self)
        loop.execute {
            let paths = connections.count
            var samples = [[UInt64]](repeating: [], count: paths)
            for i in 0..<paths { samples[i].reserveCapacity(callsPerPath) }
            let total = paths * callsPerPath
            var index = 0
            let kind = CallKind.unary(request)
            func next() {
                if index == total {
                    promise.succeed(samples)
                    return
                }
                let round = index / paths
                let slot = index % paths
                let path = round % 2 == 0 ? slot : paths - 1 - slot
                let start = nowNanos()
                connections[path].call(kind) { result in
                    let elapsed = nowNanos() - start
                    switch result {
                    case .success:
                        samples[path].append(elapsed)
                        index += 1
                        next()
                    case .failure(let error):
                        promise.fail(error)
                    }
                }
            }
            next()
        }
        return promise.futureResult
    }

    /// `streams` concurrent callers spread over `connections`, each calling unary in a loop for `seconds`.
    /// Returns calls completed and the elapsed nanoseconds.
    static func concurrentUnary(
        _ connections: [BenchConnection], streams: Int, seconds: Double, request: ByteBuffer, on loop: EventLoop
    ) -> EventLoopFuture<(calls: Int, nanos: UInt64)> {
        let promise = loop.makePromise(of: (calls: Int, nanos: UInt64).self)
        loop.execute {
            let start = nowNanos()
            let deadline = start + UInt64(seconds * 1e9)
            var calls = 0
            var running = streams
            var failed = false
            let kind = CallKind.unary(request)
            func worker(_ connection: BenchConnection) {
                connection.call(kind) { result in
                    switch result {
                    case .success:
                        calls += 1
                        if nowNanos() < deadline {
                            worker(connection)
                            return
                        }
                    case .failure(let error):
                        if !failed {
                            failed = true
                            promise.fail(error)
                        }
                    }
                    running -= 1
                    if running == 0, !failed { promise.succeed((calls, nowNanos() - start)) }
                }
            }
            for i in 0..<streams { worker(connections[i % connections.count]) }
        }
        return promise.futureResult
    }

    /// One call of `kind` (a stream); returns the response body bytes and the elapsed nanoseconds.
    static func transfer(_ connection: BenchConnection, _ kind: CallKind, on loop: EventLoop)
        -> EventLoopFuture<(bytes: Int, nanos: UInt64)>
    {
        let promise = loop.makePromise(of: (bytes: Int, nanos: UInt64).self)
        loop.execute {
            let start = nowNanos()
            connection.call(kind) { result in
                switch result {
                case .success(let bytes): promise.succeed((bytes, nowNanos() - start))
                case .failure(let error): promise.fail(error)
                }
            }
        }
        return promise.futureResult
    }
}

/// Percentile of sorted samples (nearest rank).
func percentile(_ sorted: [UInt64], _ p: Double) -> UInt64 {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
    return sorted[max(0, min(sorted.count - 1, rank))]
}
