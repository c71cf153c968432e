/// When and how long to wait before sending a failed export request again (OTLP/HTTP specification, "Retryable
/// response codes" and "Throttling").
///
/// Only 429, 502, 503 and 504 are retried; any other answer drops the batch. The wait doubles from
/// `initialBackoff` up to `maxBackoff`, with jitter, unless the server sent `Retry-After` (seconds), which is honoured
/// up to `maxRetryAfter`. After `maxAttempts` attempts the batch is dropped.
public struct OTLPRetryPolicy: Sendable, Equatable {
    /// Attempts per batch, the first one included.
    public var maxAttempts: Int
    /// The wait before the first retry.
    public var initialBackoff: Duration
    /// The longest wait between attempts without `Retry-After`.
    public var maxBackoff: Duration
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    public var maxRetryAfter: Duration

    /// A policy from its parts; the defaults suit a local Jaeger or collector.
    public init(
        maxAttempts: Int = 5, initialBackoff: Duration = .milliseconds(500), maxBackoff: Duration = .seconds(10),
        maxRetryAfter: Duration = .seconds(30)
    ) {
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.maxRetryAfter = maxRetryAfter
    }

    /// Whether an HTTP status asks for the same request later.
    public static func isRetryable(status: Int) -> Bool {
        status == 429 || status == 502 || status == 503 || status == 504
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed with a retryable answer, or nil
    /// when the attempts are used up. `jitter` in 0...1 scales the exponential wait between 50 % and 100 %.
    public func delay(afterAttempt attempt: Int, retryAfter: Duration?, jitter: Double) -> Duration? {
        guard attempt < maxAttempts else { return nil }
        if let retryAfter { return min(max(retryAfter, .zero), maxRetryAfter) }
        var wait = initialBackoff
        for _ in 1..<attempt {
            wait = wait * 2
            if wait >= maxBackoff { break }
        }
        wait = min(wait, maxBackoff)
        return wait * (0.5 + 0.5 * min(max(jitter, 0), 1))
    }

    /// `Retry-After` as delta-seconds (RFC 9110 §10.2.3); the HTTP-date form and garbage give nil (plain backoff).
    public static func parseRetryAfter(_ value: String?) -> Duration? {
        guard let value else { return nil }
        let trimmed = value.trimmingSpaces
        guard !trimmed.isEmpty, trimmed.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let seconds = Int64(trimmed)
        else { return nil }
        return .seconds(seconds)
    }
}

extension String {
    fileprivate var trimmingSpaces: Substring {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return s
    }
}
