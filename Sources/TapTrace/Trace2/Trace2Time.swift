/// Trace2's timestamps: event `time` (`2026-11-25T10:26:56.159474Z`, UTC wall time) and the start time inside a
/// session id (`20261125T102656.159412Z`). Both are the same wall clock the tap stamps RPC spans with
/// (CLOCK_REALTIME), so git spans and RPC spans line up without conversion when git runs on the tap's host.
public enum Trace2Time {
    /// Nanoseconds since the Unix epoch for an event `time` (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`), or nil.
    public static func parseEventTime(_ text: String) -> UInt64? {
        let b = Array(text.utf8)
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
            b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":")
        else { return nil }
        guard let year = number(b, 0, 4), let month = number(b, 5, 2), let day = number(b, 8, 2),
            let hour = number(b, 11, 2), let minute = number(b, 14, 2), let second = number(b, 17, 2)
        else { return nil }
        return compose(year, month, day, hour, minute, second, fraction: b[19...])
    }

    /// Nanoseconds since the Unix epoch for the start of a session-id component (`YYYYMMDDTHHMMSS[.fraction]Z…`).
    public static func parseSessionTime(_ text: Substring) -> UInt64? {
        let b = Array(text.utf8.prefix(32))
        guard b.count >= 16, b[8] == UInt8(ascii: "T") else { return nil }
        guard let year = number(b, 0, 4), let month = number(b, 4, 2), let day = number(b, 6, 2),
            let hour = number(b, 9, 2), let minute = number(b, 11, 2), let second = number(b, 13, 2)
        else { return nil }
        return compose(year, month, day, hour, minute, second, fraction: b[15...])
    }

    /// `fraction` starts at the character after the seconds: `.ffffffZ` or `Z`.
    private static func compose(
        _ year: Int, _ month: Int, _ day: Int, _ hour: Int, _ minute: Int, _ second: Int,
        fraction: ArraySlice<UInt8>
    ) -> UInt64? {
        guard (1970...9999).contains(year), (1...12).contains(month), (1...31).contains(day), hour < 24,
            minute < 60, second < 61
        else { return nil }
        var nanos: UInt64 = 0
        var rest = fraction[...]
        if rest.first == UInt8(ascii: ".") {
            rest = rest.dropFirst()
            var scale: UInt64 = 100_000_000
            var digits = 0
            while let byte = rest.first, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                if digits < 9 {
                    nanos += UInt64(byte - UInt8(ascii: "0")) * scale
                    scale /= 10
                }
                digits += 1
                rest = rest.dropFirst()
            }
            guard digits > 0 else { return nil }
        }
        guard rest.first == UInt8(ascii: "Z") else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = UInt64(days) * 86_400 + UInt64(hour * 3600 + minute * 60 + second)
        return seconds * 1_000_000_000 + nanos
    }

    private static func number(_ bytes: [UInt8], _ start: Int, _ count: Int) -> Int? {
        var value = 0
        for byte in bytes[start..<start + count] {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    /// Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let monthIndex = month > 2 ? month - 3 : month + 9
        let dayOfYear = (153 * monthIndex + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// Seconds (Trace2's `t_abs`/`t_rel`) as nanoseconds; negative or absurd values become 0.
    public static func nanos(seconds: Double) -> UInt64 {
        guard seconds.isFinite, seconds > 0, seconds < 1e9 else { return 0 }
        return UInt64((seconds * 1e9).rounded())
    }
}

/// A Trace2 session id, split into what the correlator needs.
///
/// A git process's own sid is `YYYYMMDDTHHMMSS.ffffffZ-H<8 hex>-P<pid as 8 hex>`; a child's sid is its parent's
/// sid, `/`, its own. `GIT_TRACE2_PARENT_SID=x` puts `x` in front, which is how Gitaly prefixes the correlation id.
public struct Trace2SessionID: Sendable, Hashable {
    /// The whole sid.
    public var text: String

    /// A sid from its text.
    public init(_ text: String) { self.text = text }

    /// Everything before the last `/`: the parent's sid (a git process or an outside prefix), or nil at the top.
    public var parent: String? {
        guard let slash = text.lastIndex(of: "/") else { return nil }
        return String(text[..<slash])
    }

    /// The process's own component (after the last `/`).
    public var own: Substring {
        guard let slash = text.lastIndex(of: "/") else { return text[...] }
        return text[text.index(after: slash)...]
    }

    /// The pid encoded in the own component (`-P<8 hex>`), if it has git's form.
    public var pid: Int32? {
        let component = own
        var index = component.endIndex
        var hexStart: Substring.Index?
        while index > component.startIndex {
            let previous = component.index(before: index)
            if component[previous] == "P", previous > component.startIndex,
                component[component.index(before: previous)] == "-"
            {
                hexStart = index
                break
            }
            index = previous
        }
        guard let hexStart else { return nil }
        let hex = component[hexStart...]
        guard !hex.isEmpty, hex.count <= 8, let value = UInt32(hex, radix: 16) else { return nil }
        return Int32(bitPattern: value)
    }

    /// When the process started its Trace2 session (from the own component), if it has git's form.
    public var startUnixNano: UInt64? { Trace2Time.parseSessionTime(own) }

    /// True when `component` looks like a git process's own sid (so a parent with this form is a git process).
    public static func isGitComponent(_ component: Substring) -> Bool {
        Trace2Time.parseSessionTime(component) != nil && component.contains("-P")
    }

    /// The leading components that are not git process sids, joined: the outside prefix set through
    /// `GIT_TRACE2_PARENT_SID` (Gitaly's correlation id), or nil when the sid starts with a git component.
    public var outsidePrefix: String? {
        var prefix: [Substring] = []
        for component in text.split(separator: "/", omittingEmptySubsequences: false) {
            if Self.isGitComponent(component) { break }
            prefix.append(component)
        }
        return prefix.isEmpty ? nil : prefix.joined(separator: "/")
    }
}
