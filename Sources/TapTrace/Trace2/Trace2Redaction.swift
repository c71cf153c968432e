/// Removes secrets from what git processes report before it reaches a span.
///
/// Gitaly passes credentials to git on the command line and in config (`-c http.extraHeader=Authorization: …`,
/// remote URLs with `user:password@`), and Trace2 echoes argv, `def_param` values and error messages verbatim.
/// Invariant 4 of the design (no secret leaves the process) therefore applies to Trace2 as much as to metadata.
public enum Trace2Redaction {
    /// What replaces a secret.
    public static let placeholder = "<redacted>"

    /// Words that make a config key or parameter name sensitive (compared in lower case).
    static let sensitiveWords = ["authorization", "extraheader", "password", "passwd", "token", "secret", "cookie"]

    /// argv with credentials replaced: URL user info, and the value of sensitive `key=value` arguments.
    public static func argv(_ argv: [String]) -> [String] {
        argv.map(argument)
    }

    /// One argument with credentials replaced.
    public static func argument(_ arg: String) -> String {
        let lower = arg.lowercased()
        if sensitiveWords.contains(where: { lower.contains($0) }) {
            if let equals = arg.firstIndex(of: "=") {
                return String(arg[...equals]) + placeholder
            }
            if let colon = arg.firstIndex(of: ":") {
                return String(arg[...colon]) + " " + placeholder
            }
            return placeholder
        }
        return urlUserInfo(arg)
    }

    /// A `def_param` value, redacted when the parameter's name is sensitive.
    public static func parameter(name: String, value: String) -> String {
        let lower = name.lowercased()
        if sensitiveWords.contains(where: { lower.contains($0) }) { return placeholder }
        return argument(value)
    }

    /// Free text (error messages): URL user info replaced.
    public static func text(_ text: String) -> String {
        urlUserInfo(text)
    }

    /// `scheme://user:pass@host…` → `scheme://<redacted>@host…`, for every URL in `text`.
    static func urlUserInfo(_ text: String) -> String {
        guard text.contains("://"), text.contains("@") else { return text }
        var out = ""
        var rest = Substring(text)
        while let schemeEnd = rest.firstRange(of: "://") {
            out += rest[..<schemeEnd.upperBound]
            rest = rest[schemeEnd.upperBound...]
            let authorityEnd =
                rest.firstIndex(where: { $0 == "/" || $0 == " " || $0 == "\"" || $0 == "'" || $0 == "\n" })
                ?? rest.endIndex
            if let at = rest[..<authorityEnd].lastIndex(of: "@") {
                out += placeholder
                rest = rest[at...]
            }
        }
        out += rest
        return out
    }
}
