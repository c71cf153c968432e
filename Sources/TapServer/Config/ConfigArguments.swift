/// Turns a TOML configuration file into command-line arguments, so every flag has a key and flags win.
///
/// A key names a flag with `_` for `-`; a `[table]` is a prefix: `[tls]` + `cert` is `--tls-cert`. The generated
/// arguments go before the user's, and the last occurrence of an option wins, so a flag given on the command line
/// overrides the file.
public enum ConfigArguments {
    /// What the command accepts: option name (without `--`) and how it takes values.
    public enum OptionKind: Sendable, Equatable {
        /// `--name value`.
        case value
        /// `--name value` repeatable: an array in the file gives one per element.
        case repeatable
        /// `--name` alone: `true` in the file sets it.
        case flag
    }

    /// A configuration mistake: the file, line and key, and what to write instead.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Where a generated option came from, to name the file line when the command rejects its value.
    public struct Origin: Sendable, Equatable {
        public var option: String
        public var key: String
        public var line: Int
        /// The value as passed on, when it is one word.
        public var value: String?
    }

    /// The arguments for `text` (read from `path`), checked against `options`.
    public static func arguments(
        fromTOML text: String, path: String, options: [String: OptionKind]
    ) throws(Failure) -> (arguments: [String], origins: [Origin]) {
        let entries: [TOMLEntry]
        do {
            entries = try TOMLParser.parse(text)
        } catch {
            throw Failure(description: "config \(path) \(error)")
        }
        var arguments: [String] = []
        var origins: [Origin] = []
        for entry in entries {
            let key = entry.path.joined(separator: ".")
            let option = entry.path.joined(separator: "-").replacing("_", with: "-")
            let at = "config \(path) line \(entry.line)"
            guard option != "config", option != "help", let kind = options[option] else {
                let known = options.keys.filter { $0 != "config" && $0 != "help" }.sorted()
                    .map { $0.replacing("-", with: "_") }.joined(separator: ", ")
                throw Failure(description: "\(at): unknown key '\(key)' (known keys: \(known))")
            }
            origins.append(Origin(option: option, key: key, line: entry.line, value: entry.value.word))
            switch (kind, entry.value) {
            case (.flag, .boolean(let on)):
                if on { arguments.append("--\(option)") }
            case (.flag, let value):
                throw Failure(description: "\(at): '\(key)' is a switch: write \(key) = true or false, not \(value.typeName)")
            case (.repeatable, .array(let items)):
                for item in items {
                    guard let word = item.word else {
                        throw Failure(description: "\(at): '\(key)' takes an array of strings, not nested arrays")
                    }
                    arguments += ["--\(option)", word]
                }
            case (_, .array):
                throw Failure(description: "\(at): '\(key)' takes a single value, not an array")
            case (_, .boolean):
                throw Failure(description: "\(at): '\(key)' takes a value such as \(key) = \"...\" or a number, not a boolean")
            case (_, let value):
                arguments += ["--\(option)", value.word!]
            }
        }
        return (arguments, origins)
    }

    /// The options listed in a command's help text (`helpMessage(for:columns:)` with wide columns): `--name <v>`
    /// takes a value, `--name <v> ...` repeats, `--name` alone is a switch.
    public static func options(fromHelp help: String) -> [String: OptionKind] {
        var options: [String: OptionKind] = [:]
        for line in help.split(separator: "\n") {
            // Options start at the section's indentation; deeper lines continue a description.
            let indentation = line.prefix { $0 == " " }.count
            guard indentation <= 2 else { continue }
            var rest = Substring(line.drop { $0 == " " })
            if rest.hasPrefix("-"), !rest.hasPrefix("--"), let comma = rest.firstIndex(of: ",") {
                rest = rest[rest.index(after: comma)...].drop { $0 == " " }
            }
            guard rest.hasPrefix("--") else { continue }
            let name = rest.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" }
            guard !name.isEmpty, options[String(name)] == nil else { continue }
            let after = rest.dropFirst(2 + name.count)
            if after.hasPrefix(" <") {
                let close = after.firstIndex(of: ">") ?? after.endIndex
                let tail = after[close...].dropFirst()
                options[String(name)] = tail.hasPrefix(" ...") ? .repeatable : .value
            } else {
                options[String(name)] = .flag
            }
        }
        return options
    }

    /// Inserts the file named by `--config FILE` (or `--config=FILE`) after the subcommand word of `arguments`.
    /// Returns the arguments unchanged when there is no `--config`.
    public static func expand(
        _ arguments: [String], subcommand: String, options: [String: OptionKind], readFile: (String) throws -> String
    ) throws(Failure) -> (arguments: [String], origins: [Origin], path: String?) {
        guard let commandIndex = arguments.firstIndex(of: subcommand) else { return (arguments, [], nil) }
        var path: String?
        var index = commandIndex + 1
        while index < arguments.count {
            let word = arguments[index]
            if word == "--" { break }
            if word == "--config" {
                guard index + 1 < arguments.count else { throw Failure(description: "--config needs a file path") }
                path = arguments[index + 1]
                index += 1
            } else if word.hasPrefix("--config=") {
                path = String(word.dropFirst("--config=".count))
            }
            index += 1
        }
        guard let path else { return (arguments, [], nil) }
        let text: String
        do {
            text = try readFile(path)
        } catch {
            throw Failure(description: "cannot read config file \(path): \(error)")
        }
        let (generated, origins) = try Self.arguments(fromTOML: text, path: path, options: options)
        var expanded = arguments
        expanded.insert(contentsOf: generated, at: commandIndex + 1)
        return (expanded, origins, path)
    }

    /// Names the file line in an error message about an option that came from the file (and was not also given
    /// on the command line).
    public static func annotate(_ message: String, origins: [Origin], path: String, commandLine: [String]) -> String {
        for origin in origins where message.contains("'--\(origin.option)") || message.contains("--\(origin.option) ") {
            let quotesFileValue = origin.value.map { message.contains("'\($0)'") } ?? false
            let onCommandLine =
                commandLine.contains("--\(origin.option)") || commandLine.contains { $0.hasPrefix("--\(origin.option)=") }
            if onCommandLine && !quotesFileValue { continue }
            return "config \(path) line \(origin.line) (\(origin.key)): \(message)"
        }
        return message
    }

    /// Names the file line in an error about a value (quoted as `'value'`) that came from the file and was not
    /// overridden on the command line.
    public static func annotateValue(_ message: String, origins: [Origin], path: String, commandLine: [String]) -> String {
        for origin in origins {
            guard let value = origin.value, !value.isEmpty, message.contains("'\(value)'") else { continue }
            let onCommandLine =
                commandLine.contains("--\(origin.option)") || commandLine.contains { $0.hasPrefix("--\(origin.option)=") }
            if onCommandLine { continue }
            return "config \(path) line \(origin.line) (\(origin.key)): \(message)"
        }
        return message
    }
}
