/// A TOML value as gitaly-tap's configuration uses it (the subset of TOML 1.0 that Gitaly's own `config.toml`
/// uses: tables, strings, integers, floats, booleans and arrays of those).
public enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)
    case array([TOMLValue])

    /// The value as a command-line word (arrays have no single word).
    var word: String? {
        switch self {
        case .string(let text): text
        case .integer(let value): String(value)
        case .float(let value): String(value)
        case .boolean(let value): String(value)
        case .array: nil
        }
    }

    var typeName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a number"
        case .boolean: "a boolean"
        case .array: "an array"
        }
    }
}

/// One `key = value` of a TOML document, with its full key path (`[tls]` + `cert` is `["tls", "cert"]`).
public struct TOMLEntry: Sendable, Equatable {
    public var path: [String]
    public var value: TOMLValue
    /// 1-based line of the key.
    public var line: Int
}

/// A syntax error, with the line it is on.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

/// Parses TOML text into its entries, in file order. Unsupported TOML features (inline tables, arrays of tables,
/// dates, multi-line strings) are reported as errors naming the line rather than misread.
public enum TOMLParser {
    public static func parse(_ text: String) throws(TOMLError) -> [TOMLEntry] {
        var scanner = Scanner(Array(text.utf8))
        var entries: [TOMLEntry] = []
        var table: [String] = []
        var seen: [[String]: Int] = [:]
        var tables: Set<[String]> = []
        while true {
            scanner.skipBlankAndComments()
            guard let byte = scanner.peek() else { break }
            let line = scanner.line
            if byte == UInt8(ascii: "[") {
                scanner.advance()
                if scanner.peek() == UInt8(ascii: "[") {
                    throw TOMLError(line: line, message: "arrays of tables ([[...]]) are not used by gitaly-tap's configuration")
                }
                scanner.skipSpaces()
                let path = try scanner.key()
                scanner.skipSpaces()
                guard scanner.peek() == UInt8(ascii: "]") else {
                    throw TOMLError(line: line, message: "a table header must end with ']'")
                }
                scanner.advance()
                try scanner.endOfLine()
                guard tables.insert(path).inserted else {
                    throw TOMLError(line: line, message: "table [\(path.joined(separator: "."))] is defined twice")
                }
                table = path
                continue
            }
            let key = try scanner.key()
            scanner.skipSpaces()
            guard scanner.peek() == UInt8(ascii: "=") else {
                throw TOMLError(line: scanner.line, message: "expected '=' after the key '\(key.joined(separator: "."))'")
            }
            scanner.advance()
            scanner.skipSpaces()
            let value = try scanner.value()
            try scanner.endOfLine()
            let path = table + key
            if let first = seen[path] {
                throw TOMLError(line: line, message: "key '\(path.joined(separator: "."))' is already set on line \(first)")
            }
            seen[path] = line
            entries.append(TOMLEntry(path: path, value: value, line: line))
        }
        return entries
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0
        var line = 1

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        func peek(_ offset: Int = 0) -> UInt8? { index + offset < bytes.count ? bytes[index + offset] : nil }

        mutating func advance() {
            if bytes[index] == UInt8(ascii: "\n") { line += 1 }
            index += 1
        }

        mutating func skipSpaces() {
            while let byte = peek(), byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { advance() }
        }

        mutating func skipComment() {
            if peek() == UInt8(ascii: "#") {
                while let byte = peek(), byte != UInt8(ascii: "\n") { advance() }
            }
        }

        mutating func skipBlankAndComments() {
            while true {
                skipSpaces()
                skipComment()
                guard let byte = peek(), byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") else { return }
                advance()
            }
        }

        /// After a key/value or table header only a comment may follow on the line.
        mutating func endOfLine() throws(TOMLError) {
            skipSpaces()
            skipComment()
            if peek() == UInt8(ascii: "\r") { advance() }
            guard let byte = peek() else { return }
            guard byte == UInt8(ascii: "\n") else {
                throw TOMLError(line: line, message: "unexpected '\(Self.show(byte))' after the value (one key = value per line)")
            }
            advance()
        }

        static func show(_ byte: UInt8) -> String { String(decoding: [byte], as: UTF8.self) }

        static func isBare(_ byte: UInt8) -> Bool {
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }

        /// A dotted key: bare or quoted parts separated by dots.
        mutating func key() throws(TOMLError) -> [String] {
            var parts: [String] = []
            while true {
                skipSpaces()
                guard let byte = peek() else { throw TOMLError(line: line, message: "expected a key") }
                if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                    parts.append(try string())
                } else {
                    let start = index
                    while let next = peek(), Self.isBare(next) { advance() }
                    guard index > start else {
                        throw TOMLError(line: line, message: "expected a key, found '\(Self.show(byte))'")
                    }
                    parts.append(String(decoding: bytes[start..<index], as: UTF8.self))
                }
                skipSpaces()
                guard peek() == UInt8(ascii: ".") else { return parts }
                advance()
            }
        }

        mutating func value() throws(TOMLError) -> TOMLValue {
            guard let byte = peek(), byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "#") else {
                throw TOMLError(line: line, message: "expected a value after '='")
            }
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                return .string(try string())
            case UInt8(ascii: "["):
                return try array()
            case UInt8(ascii: "{"):
                throw TOMLError(line: line, message: "inline tables are not used by gitaly-tap's configuration; use a [table]")
            default:
                return try scalar()
            }
        }

        mutating func array() throws(TOMLError) -> TOMLValue {
            let startLine = line
            advance()
            var items: [TOMLValue] = []
            while true {
                skipBlankAndComments()
                guard let byte = peek() else { throw TOMLError(line: startLine, message: "array is not closed with ']'") }
                if byte == UInt8(ascii: "]") {
                    advance()
                    return .array(items)
                }
                items.append(try value())
                skipBlankAndComments()
                if peek() == nil {
                    throw TOMLError(line: startLine, message: "array is not closed with ']'")
                } else if peek() == UInt8(ascii: ",") {
                    advance()
                } else if peek() != UInt8(ascii: "]") {
                    throw TOMLError(line: line, message: "expected ',' or ']' in the array")
                }
            }
        }

        mutating func string() throws(TOMLError) -> String {
            let quote = bytes[index]
            let startLine = line
            if peek(1) == quote, peek(2) == quote {
                throw TOMLError(line: line, message: "multi-line strings are not used by gitaly-tap's configuration")
            }
            advance()
            var out: [UInt8] = []
            while true {
                guard let byte = peek(), byte != UInt8(ascii: "\n") else {
                    throw TOMLError(line: startLine, message: "string is not closed on its line")
                }
                advance()
                if byte == quote { return String(decoding: out, as: UTF8.self) }
                if byte == UInt8(ascii: "\\"), quote == UInt8(ascii: "\"") {
                    guard let escaped = peek() else { throw TOMLError(line: line, message: "string ends in '\\'") }
                    advance()
                    switch escaped {
                    case UInt8(ascii: "\""): out.append(escaped)
                    case UInt8(ascii: "\\"): out.append(escaped)
                    case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
                    case UInt8(ascii: "t"): out.append(UInt8(ascii: "\t"))
                    case UInt8(ascii: "r"): out.append(UInt8(ascii: "\r"))
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "u"), UInt8(ascii: "U"):
                        let count = escaped == UInt8(ascii: "u") ? 4 : 8
                        guard index + count <= bytes.count,
                            let code = UInt32(String(decoding: bytes[index..<index + count], as: UTF8.self), radix: 16),
                            let scalar = Unicode.Scalar(code)
                        else { throw TOMLError(line: line, message: "invalid \\\(Self.show(escaped)) escape in a string") }
                        for _ in 0..<count { advance() }
                        out += Array(String(Character(scalar)).utf8)
                    default:
                        throw TOMLError(line: line, message: "invalid escape '\\\(Self.show(escaped))' in a string")
                    }
                } else {
                    out.append(byte)
                }
            }
        }

        mutating func scalar() throws(TOMLError) -> TOMLValue {
            let start = index
            while let byte = peek(), ![UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"),
                UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "#")].contains(byte)
            {
                advance()
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            if text == "true" { return .boolean(true) }
            if text == "false" { return .boolean(false) }
            let digits = String(text.filter { $0 != "_" })
            for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where digits.hasPrefix(prefix) {
                if let value = Int64(digits.dropFirst(2), radix: radix) { return .integer(value) }
            }
            if let value = Int64(digits) { return .integer(value) }
            if digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) || ["inf", "+inf", "-inf", "nan"].contains(digits),
                let value = Double(digits)
            {
                return .float(value)
            }
            if text.count >= 10, text.prefix(4).allSatisfy(\.isNumber), text.dropFirst(4).first == "-" {
                throw TOMLError(line: line, message: "dates are not used by gitaly-tap's configuration")
            }
            throw TOMLError(
                line: line, message: "'\(text)' is not a value (strings need quotes: \"...\"; or a number, true, false, [array])")
        }
    }
}
