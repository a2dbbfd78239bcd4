//! Static check of a route script (`serlua check`): unknown primitives,
//! wrong arity, calls outside their route kind, literal arguments a fixup
//! rejects, and references to routes that do not exist — each reported with
//! file:line before the proxy starts.
//!
//! This is the Lua counterpart of what Kamailio/SER do while loading
//! `ser.cfg`: every module exports a `cmd_export_t` table (name, parameter
//! count, fixup function, allowed route flags such as `REQUEST_ROUTE |
//! FAILURE_ROUTE`), and the config parser rejects a call whose name is not in
//! any table, whose argument count does not match, whose fixup fails (a regex
//! that does not compile, a reply code out of range), or which appears in a
//! route type the function does not allow. serlua's tables are
//! [`Export`]s; this module reads the script's syntax tree (full_moon,
//! Lua 5.4) and applies the same rules, with real lexical scoping so that a
//! local variable or parameter named like a primitive is not mistaken for it.
//!
//! What is checked:
//! 1. a call of a global name that no module exports, the Lua runtime does
//!    not define and the script never assigns (`unknown function 'foo'`,
//!    with a `did you mean` hint when an export name is close);
//! 2. the argument count of a call to an export;
//! 3. the export's fixup, given the literal arguments of the call;
//! 4. a call, directly inside a route body, of an export not allowed in
//!    that route kind (`save() is not allowed in onreply_route`);
//! 5. references to routes that do not exist: `route[7]`, `route.pstn`,
//!    `route(7)`, and the first argument of `t_on_reply`, `t_on_failure`,
//!    `t_on_branch`.
//!
//! Calls through a table or a method (`string.format`, `msg:header`), calls
//! of local functions and of globals the script assigns somewhere are not
//! flagged. Functions called from several route kinds are not followed: only
//! direct calls in a route body (and in functions nested in it) are checked
//! against the route kind.

use std::collections::{HashMap, HashSet};
use std::fmt;

use full_moon::LuaVersion;
use full_moon::ast::{
    Assignment, Block, Call, Expression, Field, FunctionArgs, FunctionBody, FunctionDeclaration, Index, LastStmt, Parameter, Prefix, Stmt,
    Suffix, TableConstructor, Var,
};
use full_moon::node::Node;
use full_moon::tokenizer::{Position, StringLiteralQuoteType, Symbol, TokenReference, TokenType};

use super::export::{Export, LitArg, RouteKind};

/// One problem found in a route script, located at `file:line:column`
/// (line and column start at 1; the column counts characters).
///
/// Displayed as `file:line:col: message`, the format compilers and editors
/// understand, so an admin can jump straight to the offending call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The script path as given to the checker.
    pub file: String,
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What is wrong, e.g. `sl_send_reply expects 2 arguments, got 1`.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// The key of a route in its table (`route[1]` is `Num(1)`, `route.pstn`
/// is `Name("pstn")`), shared with the runtime; re-exported here because
/// [`CheckInput::routes`] takes it.
pub use super::export::RouteKey;

/// How the admin writes a route in Lua: `route[1]`, `route.pstn`,
/// `failure_route["not an identifier"]`.
fn route_path(kind: RouteKind, key: &RouteKey) -> String {
    let table = kind.table();
    match key {
        RouteKey::Num(n) => format!("{table}[{n}]"),
        RouteKey::Name(name) if is_identifier(name) => format!("{table}.{name}"),
        RouteKey::Name(name) => format!("{table}[{name:?}]"),
    }
}

/// What [`check`] needs to know about a script and the runtime it will run
/// in. The two callbacks are answered by the loader after it executed the
/// script once (so script-defined globals and routes are visible).
pub struct CheckInput<'a> {
    /// Path of the script, used in every [`Diagnostic`].
    pub file: &'a str,
    /// The script's Lua source.
    pub source: &'a str,
    /// Every primitive of every module (the union of the modules' export
    /// tables, Kamailio's `cmd_export_t` arrays).
    pub exports: &'a [Export],
    /// True when `_G[name]` is non-nil after the script was executed: the
    /// Lua standard library, the primitives, script-defined globals.
    pub is_global: &'a dyn Fn(&str) -> bool,
    /// True when that route exists after the script was executed.
    pub routes: &'a dyn Fn(RouteKind, &RouteKey) -> bool,
}

/// Checks a route script without running any route, the way SER checks
/// `ser.cfg` at startup against its modules' export tables and fixups.
///
/// Returns every error found, in source order; an empty vector means the
/// script passed. A script that does not parse yields a single syntax-error
/// diagnostic (see [`syntax_check`]).
pub fn check(input: &CheckInput) -> Vec<Diagnostic> {
    let parsed = full_moon::parse_fallible(input.source, LuaVersion::lua54());
    if let Some(err) = parsed.errors().first() {
        return vec![syntax_diagnostic(input.file, err)];
    }
    let block = parsed.ast().nodes();

    let mut exports: HashMap<&str, &Export> = HashMap::new();
    for export in input.exports {
        exports.entry(export.name).or_insert(export);
    }

    // Pass 1: every global the script assigns, at any depth.
    let mut walker = Walker {
        input,
        exports,
        globals: HashSet::new(),
        collecting: true,
        scopes: Vec::new(),
        kind: None,
        diags: Vec::new(),
    };
    walker.block(block);

    // Pass 2: the checks proper.
    walker.collecting = false;
    walker.scopes.clear();
    walker.kind = None;
    walker.block(block);

    let mut diags = walker.diags;
    diags.sort_by_key(|d| (d.line, d.column));
    diags
}

/// Parses `source` as Lua 5.4 and reports the first syntax error with its
/// line and column, in the same `file:line:col: message` form as the other
/// checks of `serlua check`. (The runtime loader reports Lua's own syntax
/// errors; this keeps the checker's output uniform.)
pub fn syntax_check(file: &str, source: &str) -> Result<(), Diagnostic> {
    let parsed = full_moon::parse_fallible(source, LuaVersion::lua54());
    match parsed.errors().first() {
        Some(err) => Err(syntax_diagnostic(file, err)),
        None => Ok(()),
    }
}

fn syntax_diagnostic(file: &str, err: &full_moon::Error) -> Diagnostic {
    // Like Lua, point at the token where parsing stopped (for a missing
    // `end`, the end of the file), not at the range of the enclosing block.
    let mut start = err.range().0;
    let message = match err {
        full_moon::Error::AstError(e) => {
            let at = e.token().start_position();
            if at.line() > 0 {
                start = at;
            }
            let near = match e.token().token_type() {
                TokenType::Eof => " near end of file".to_string(),
                TokenType::Identifier { identifier } => format!(" near '{identifier}'"),
                TokenType::Symbol { symbol } => format!(" near '{symbol}'"),
                TokenType::Number { text } => format!(" near '{text}'"),
                _ => String::new(),
            };
            format!("syntax error: {}{near}", e.error_message())
        }
        full_moon::Error::TokenizerError(e) => format!("syntax error: {e}"),
    };
    Diagnostic {
        file: file.to_string(),
        line: start.line().max(1),
        column: start.character().max(1),
        message,
    }
}

/// The route kind whose global table is `name`.
fn route_table_kind(name: &str) -> Option<RouteKind> {
    [RouteKind::Request, RouteKind::OnReply, RouteKind::Failure, RouteKind::Branch]
        .into_iter()
        .find(|k| k.table() == name)
}

/// The route kind a `t_on_*` primitive arms.
fn t_on_kind(name: &str) -> Option<RouteKind> {
    match name {
        "t_on_reply" => Some(RouteKind::OnReply),
        "t_on_failure" => Some(RouteKind::Failure),
        "t_on_branch" => Some(RouteKind::Branch),
        _ => None,
    }
}

const LUA_KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
    "return", "then", "true", "until", "while",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !LUA_KEYWORDS.contains(&s)
}

/// The name of an identifier token.
fn ident(tok: &TokenReference) -> Option<&str> {
    match tok.token_type() {
        TokenType::Identifier { identifier } => Some(identifier.as_str()),
        _ => None,
    }
}

/// The value of a literal expression, as a fixup sees it: strings (escapes
/// decoded), integers, booleans, nil. Anything else is `None`.
fn lit_arg(expr: &Expression) -> Option<LitArg> {
    match expr {
        Expression::String(tok) => lit_string(tok).map(LitArg::Str),
        Expression::Number(tok) => lit_int(tok).map(LitArg::Int),
        Expression::Symbol(tok) => match tok.token_type() {
            TokenType::Symbol { symbol: Symbol::True } => Some(LitArg::Bool(true)),
            TokenType::Symbol { symbol: Symbol::False } => Some(LitArg::Bool(false)),
            TokenType::Symbol { symbol: Symbol::Nil } => Some(LitArg::Nil),
            _ => None,
        },
        Expression::Parentheses { expression, .. } => lit_arg(expression),
        Expression::UnaryOperator { unop, expression } => {
            let minus = matches!(unop.token().token_type(), TokenType::Symbol { symbol: Symbol::Minus });
            match (minus, lit_arg(expression)) {
                // Lua integers wrap: -(-9223372036854775808) is itself.
                (true, Some(LitArg::Int(n))) => Some(LitArg::Int(n.wrapping_neg())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The decoded contents of a string literal token.
fn lit_string(tok: &TokenReference) -> Option<String> {
    match tok.token_type() {
        TokenType::StringLiteral { literal, quote_type, .. } => {
            if *quote_type == StringLiteralQuoteType::Brackets {
                Some(long_string(literal))
            } else {
                unescape(literal)
            }
        }
        _ => None,
    }
}

/// A long string `[[...]]`: no escapes, the first newline is dropped and
/// every end-of-line sequence reads as `\n` (Lua manual §3.1).
fn long_string(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        if c == '\n' || c == '\r' {
            if let Some(&next) = chars.peek() {
                if (next == '\n' || next == '\r') && next != c {
                    chars.next();
                }
            }
            if !first {
                out.push('\n');
            }
        } else {
            out.push(c);
        }
        first = false;
    }
    out
}

/// Decodes the escapes of a quoted Lua 5.4 string. `None` when an escape is
/// invalid or the result is not UTF-8 (the fixup then sees a run-time value).
fn unescape(raw: &str) -> Option<String> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = chars.next()?;
        match e {
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '\\' => out.push(b'\\'),
            '"' => out.push(b'"'),
            '\'' => out.push(b'\''),
            '\n' | '\r' => {
                if let Some(&next) = chars.peek() {
                    if (next == '\n' || next == '\r') && next != e {
                        chars.next();
                    }
                }
                out.push(b'\n');
            }
            'z' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
            }
            'x' => {
                let hi = chars.next()?.to_digit(16)?;
                let lo = chars.next()?.to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let mut value: u32 = 0;
                let mut digits = 0;
                loop {
                    let d = chars.next()?;
                    if d == '}' {
                        break;
                    }
                    value = value.checked_mul(16)?.checked_add(d.to_digit(16)?)?;
                    digits += 1;
                }
                if digits == 0 {
                    return None;
                }
                let ch = char::from_u32(value)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            d if d.is_ascii_digit() => {
                let mut value = d.to_digit(10)?;
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(10)) {
                        Some(v) => {
                            value = value * 10 + v;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(u8::try_from(value).ok()?);
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The value of an integer numeral (decimal, or hexadecimal with Lua's
/// wrap-around). Floats are `None`.
fn lit_int(tok: &TokenReference) -> Option<i64> {
    let TokenType::Number { text } = tok.token_type() else {
        return None;
    };
    let text = text.as_str();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut value: u64 = 0;
        for c in hex.chars() {
            value = value.wrapping_mul(16).wrapping_add(u64::from(c.to_digit(16)?));
        }
        return Some(value as i64);
    }
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        // A decimal integer that overflows is a float in Lua.
        return text.parse().ok();
    }
    None
}

/// The route key a `route(…)` / `t_on_reply(…)` argument names.
fn call_key(arg: &LitArg) -> Option<RouteKey> {
    match arg {
        LitArg::Int(n) => Some(RouteKey::Num(*n)),
        LitArg::Str(s) => Some(RouteKey::from_text(s)),
        _ => None,
    }
}

/// The route key an index names: `.pstn`, `["pstn"]`, `[1]`.
fn index_key(index: &Index) -> Option<RouteKey> {
    match index {
        Index::Dot { name, .. } => ident(name).map(|n| RouteKey::Name(n.to_string())),
        Index::Brackets { expression, .. } => match lit_arg(expression)? {
            LitArg::Int(n) => Some(RouteKey::Num(n)),
            LitArg::Str(s) => Some(RouteKey::Name(s)),
            _ => None,
        },
        _ => None,
    }
}

/// "2 arguments", "1 or 2 arguments", "no arguments" …
fn arity_text(min: u8, max: u8) -> String {
    let plural = |n: u8| if n == 1 { "" } else { "s" };
    if min == max {
        if min == 0 {
            "no arguments".to_string()
        } else {
            format!("{min} argument{}", plural(min))
        }
    } else if max == u8::MAX {
        format!("at least {min} argument{}", plural(min))
    } else if max == min + 1 {
        format!("{min} or {max} arguments")
    } else {
        format!("{min} to {max} arguments")
    }
}

/// Optimal string alignment distance (Levenshtein plus adjacent
/// transpositions), so `sl_send_repyl` is one edit from `sl_send_reply`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = v;
        }
    }
    d[a.len() * width + b.len()]
}

/// The walk over the syntax tree. It runs twice: first to collect the
/// globals the script assigns (`collecting`), then to check.
struct Walker<'c, 'a> {
    input: &'c CheckInput<'a>,
    exports: HashMap<&'a str, &'a Export>,
    /// Globals the script assigns anywhere (`foo = …`, `function foo()`).
    globals: HashSet<String>,
    collecting: bool,
    /// Lexical scopes, innermost last: the locals each one declares.
    scopes: Vec<Vec<String>>,
    /// The kind of the route whose body is being walked, if any.
    kind: Option<RouteKind>,
    diags: Vec<Diagnostic>,
}

impl Walker<'_, '_> {
    fn emit(&mut self, pos: Position, message: String) {
        if self.collecting {
            return;
        }
        self.diags.push(Diagnostic {
            file: self.input.file.to_string(),
            line: pos.line(),
            column: pos.character(),
            message,
        });
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes.iter().rev().any(|s| s.iter().any(|n| n == name))
    }

    fn declare(&mut self, tok: &TokenReference) {
        if let (Some(name), Some(scope)) = (ident(tok), self.scopes.last_mut()) {
            scope.push(name.to_string());
        }
    }

    /// A block in a scope of its own (also the main chunk).
    fn block(&mut self, block: &Block) {
        self.scopes.push(Vec::new());
        self.block_in_scope(block);
        self.scopes.pop();
    }

    /// The statements of a block, in the current (caller-managed) scope.
    fn block_in_scope(&mut self, block: &Block) {
        for stmt in block.stmts() {
            self.stmt(stmt);
        }
        if let Some(LastStmt::Return(ret)) = block.last_stmt() {
            for e in ret.returns() {
                self.expr(e);
            }
        }
    }

    fn function_body(&mut self, body: &FunctionBody, kind: Option<RouteKind>, method: bool) {
        let saved = self.kind;
        self.kind = kind;
        let mut scope = Vec::new();
        if method {
            scope.push("self".to_string());
        }
        for param in body.parameters() {
            if let Parameter::Name(tok) = param {
                if let Some(name) = ident(tok) {
                    scope.push(name.to_string());
                }
            }
        }
        self.scopes.push(scope);
        self.block_in_scope(body.block());
        self.scopes.pop();
        self.kind = saved;
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Assignment(a) => self.assignment(a),
            Stmt::Do(d) => self.block(d.block()),
            Stmt::FunctionCall(call) => self.chain(call.prefix(), call.suffixes(), false),
            Stmt::FunctionDeclaration(f) => self.function_declaration(f),
            Stmt::GenericFor(f) => {
                for e in f.expressions() {
                    self.expr(e);
                }
                self.scopes.push(Vec::new());
                for name in f.names() {
                    self.declare(name);
                }
                self.block(f.block());
                self.scopes.pop();
            }
            Stmt::If(i) => {
                self.expr(i.condition());
                self.block(i.block());
                for elseif in i.else_if().into_iter().flatten() {
                    self.expr(elseif.condition());
                    self.block(elseif.block());
                }
                if let Some(b) = i.else_block() {
                    self.block(b);
                }
            }
            Stmt::LocalAssignment(l) => {
                for e in l.expressions() {
                    self.expr(e);
                }
                for name in l.names() {
                    self.declare(name);
                }
            }
            Stmt::LocalFunction(f) => {
                self.declare(f.name());
                self.function_body(f.body(), self.kind, false);
            }
            Stmt::NumericFor(f) => {
                self.expr(f.start());
                self.expr(f.end());
                if let Some(step) = f.step() {
                    self.expr(step);
                }
                self.scopes.push(Vec::new());
                self.declare(f.index_variable());
                self.block(f.block());
                self.scopes.pop();
            }
            Stmt::Repeat(r) => {
                // The `until` condition sees the locals of the body.
                self.scopes.push(Vec::new());
                self.block_in_scope(r.block());
                self.expr(r.until());
                self.scopes.pop();
            }
            Stmt::While(w) => {
                self.expr(w.condition());
                self.block(w.block());
            }
            _ => {}
        }
    }

    fn function_declaration(&mut self, f: &FunctionDeclaration) {
        let names: Vec<&str> = f.name().names().iter().filter_map(ident).collect();
        let method = f.name().method_name().is_some();
        let mut kind = self.kind;
        if let Some(&first) = names.first() {
            if !self.is_local(first) {
                match (names.len(), method) {
                    // function foo() … end
                    (1, false) => {
                        self.globals.insert(first.to_string());
                    }
                    // function route.pstn() … end / function _G.foo() … end
                    (2, false) => {
                        if let Some(k) = route_table_kind(first) {
                            kind = Some(k);
                        } else if first == "_G" {
                            self.globals.insert(names[1].to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        self.function_body(f.body(), kind, method);
    }

    /// If `var` is `route[N]` / `route.name` (any route table, not shadowed),
    /// the kind of route an assignment to it defines.
    fn route_target(&self, var: &Var) -> Option<RouteKind> {
        let Var::Expression(ve) = var else {
            return None;
        };
        let Prefix::Name(tok) = ve.prefix() else {
            return None;
        };
        let name = ident(tok)?;
        let mut suffixes = ve.suffixes();
        match (suffixes.next(), suffixes.next()) {
            (Some(Suffix::Index(_)), None) if !self.is_local(name) => route_table_kind(name),
            _ => None,
        }
    }

    fn assignment(&mut self, a: &Assignment) {
        let vars: Vec<&Var> = a.variables().iter().collect();
        for var in &vars {
            match var {
                Var::Name(tok) => {
                    if let Some(name) = ident(tok) {
                        if !self.is_local(name) {
                            self.globals.insert(name.to_string());
                        }
                    }
                }
                Var::Expression(ve) => self.chain(ve.prefix(), ve.suffixes(), true),
                _ => {}
            }
        }
        for (i, e) in a.expressions().iter().enumerate() {
            let var = vars.get(i);
            // route[1] = function() … end
            let field_kind = var.and_then(|v| self.route_target(v));
            // route = { main = function() … end, [1] = function() … end }
            let table_kind = match var {
                Some(Var::Name(tok)) => ident(tok).filter(|n| !self.is_local(n)).and_then(route_table_kind),
                _ => None,
            };
            match e {
                Expression::Function(f) if field_kind.is_some() => self.function_body(f.body(), field_kind, false),
                Expression::TableConstructor(t) if table_kind.is_some() => self.table(t, table_kind),
                _ => self.expr(e),
            }
        }
    }

    /// A table constructor; when it is assigned to a route table, its
    /// function-valued fields are route bodies of `field_kind`.
    fn table(&mut self, t: &TableConstructor, field_kind: Option<RouteKind>) {
        for field in t.fields() {
            let value = match field {
                Field::ExpressionKey { key, value, .. } => {
                    self.expr(key);
                    value.as_ref()
                }
                Field::NameKey { value, .. } => value.as_ref(),
                Field::NoKey(value) => value,
                _ => continue,
            };
            match (value, field_kind) {
                (Expression::Function(f), Some(k)) => self.function_body(f.body(), Some(k), false),
                _ => self.expr(value),
            }
        }
    }

    fn expr(&mut self, e: &Expression) {
        match e {
            Expression::BinaryOperator { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expression::Parentheses { expression, .. } => self.expr(expression),
            Expression::UnaryOperator { expression, .. } => self.expr(expression),
            Expression::Function(f) => self.function_body(f.body(), self.kind, false),
            Expression::FunctionCall(call) => self.chain(call.prefix(), call.suffixes(), false),
            Expression::TableConstructor(t) => self.table(t, None),
            Expression::Var(Var::Expression(ve)) => self.chain(ve.prefix(), ve.suffixes(), false),
            _ => {}
        }
    }

    /// A prefix followed by indexes and calls: `f(x)`, `route[1]()`,
    /// `msg:header("Via")`, `a.b.c`. `lhs` when it is an assignment target.
    fn chain<'s>(&mut self, prefix: &Prefix, suffixes: impl Iterator<Item = &'s Suffix>, lhs: bool) {
        let suffixes: Vec<&Suffix> = suffixes.collect();
        match prefix {
            Prefix::Expression(e) => self.expr(e),
            Prefix::Name(tok) => {
                if let Some(name) = ident(tok) {
                    if !self.is_local(name) {
                        self.global_chain(tok, name, &suffixes, lhs);
                    }
                }
            }
            _ => {}
        }
        for suffix in suffixes {
            match suffix {
                Suffix::Index(Index::Brackets { expression, .. }) => self.expr(expression),
                Suffix::Call(Call::AnonymousCall(args)) => self.args(args),
                Suffix::Call(Call::MethodCall(m)) => self.args(m.args()),
                _ => {}
            }
        }
    }

    fn args(&mut self, args: &FunctionArgs) {
        match args {
            FunctionArgs::Parentheses { arguments, .. } => {
                for e in arguments {
                    self.expr(e);
                }
            }
            FunctionArgs::TableConstructor(t) => self.table(t, None),
            _ => {}
        }
    }

    /// A chain whose prefix is the global `name` (not shadowed by a local).
    fn global_chain(&mut self, tok: &TokenReference, name: &str, suffixes: &[&Suffix], lhs: bool) {
        let first = suffixes.first().copied();
        if let Some(kind) = route_table_kind(name) {
            match first {
                Some(Suffix::Index(index)) => {
                    // `route[1] = …` defines the route; anything else reads it.
                    if lhs && suffixes.len() == 1 {
                        return;
                    }
                    if let Some(key) = index_key(index) {
                        self.check_route(kind, &key, tok.token().start_position(), "");
                    }
                }
                Some(Suffix::Call(Call::AnonymousCall(args))) if kind == RouteKind::Request => {
                    // route(1) == route[1]()
                    if let Some((Some(lit), pos)) = call_args(args).0.first() {
                        if let Some(key) = call_key(lit) {
                            self.check_route(kind, &key, *pos, "");
                        }
                    }
                }
                _ => {}
            }
            return;
        }
        if name == "_G" && lhs && suffixes.len() == 1 {
            if let Some(Suffix::Index(index)) = first {
                if let Some(RouteKey::Name(n)) = index_key(index) {
                    self.globals.insert(n);
                }
            }
            return;
        }
        if let Some(Suffix::Call(Call::AnonymousCall(args))) = first {
            self.global_call(tok, name, args);
        }
    }

    fn check_route(&mut self, kind: RouteKind, key: &RouteKey, pos: Position, note: &str) {
        if self.collecting || (self.input.routes)(kind, key) {
            return;
        }
        self.emit(pos, format!("{} is not defined{note}", route_path(kind, key)));
    }

    /// A call of the global function `name`.
    fn global_call(&mut self, tok: &TokenReference, name: &str, args: &FunctionArgs) {
        if self.collecting {
            return;
        }
        let pos = tok.token().start_position();
        let (args, variadic) = call_args(args);

        if let Some(kind) = t_on_kind(name) {
            if let Some((Some(lit), arg_pos)) = args.first() {
                if let Some(key) = call_key(lit) {
                    self.check_route(kind, &key, *arg_pos, &format!(" ({name})"));
                }
            }
        }

        // A global the script assigns itself is the script's function,
        // even when it reuses a primitive's name.
        if !self.globals.contains(name) {
            if let Some(&export) = self.exports.get(name) {
                self.check_export(export, pos, &args, variadic);
                return;
            }
        }
        if self.globals.contains(name) || route_table_kind(name).is_some() || (self.input.is_global)(name) {
            return;
        }
        let mut message = format!("unknown function '{name}'");
        if let Some(suggestion) = self.suggest(name) {
            message.push_str(&format!("; did you mean '{suggestion}'?"));
        }
        self.emit(pos, message);
    }

    fn check_export(&mut self, export: &Export, pos: Position, args: &[(Option<LitArg>, Position)], variadic: bool) {
        let name = export.name;
        let count = args.len();
        // With `...` or a call as last argument the count is only known at
        // run time.
        let arity_ok = variadic || (count >= usize::from(export.min_args) && count <= usize::from(export.max_args));
        if !arity_ok {
            self.emit(
                pos,
                format!("{name} expects {}, got {count}", arity_text(export.min_args, export.max_args)),
            );
        }
        if let Some(kind) = self.kind {
            if !export.routes.allows(kind) {
                self.emit(pos, format!("{name}() is not allowed in {}", kind.table()));
            }
        }
        if let (true, Some(fixup)) = (arity_ok, export.fixup) {
            let lits: Vec<Option<LitArg>> = args.iter().map(|(l, _)| l.clone()).collect();
            if let Err(message) = fixup(&lits) {
                self.emit(pos, format!("{name}: {message}"));
            }
        }
    }

    /// The closest export name within two edits, if any. Short names need
    /// a closer match (`foo` is not a typo of `log`).
    fn suggest(&self, name: &str) -> Option<&str> {
        let len = name.chars().count();
        self.exports
            .keys()
            .map(|&e| (edit_distance(name, e), e))
            .filter(|&(d, _)| d <= 2 && 3 * d <= len)
            .min()
            .map(|(_, e)| e)
    }
}

/// The arguments of a call as literals with their positions, and whether the
/// last one may expand to several values (`...` or a call).
fn call_args(args: &FunctionArgs) -> (Vec<(Option<LitArg>, Position)>, bool) {
    let start = |n: &dyn Node| n.start_position().unwrap_or_default();
    match args {
        FunctionArgs::Parentheses { arguments, .. } => {
            let list: Vec<(Option<LitArg>, Position)> = arguments.iter().map(|e| (lit_arg(e), start(e))).collect();
            let variadic = arguments.iter().last().is_some_and(is_multi_value);
            (list, variadic)
        }
        FunctionArgs::String(tok) => (vec![(lit_string(tok).map(LitArg::Str), tok.token().start_position())], false),
        FunctionArgs::TableConstructor(t) => (vec![(None, start(t.as_ref()))], false),
        _ => (Vec::new(), false),
    }
}

/// True for an expression that can yield several values: a call or `...`.
fn is_multi_value(e: &Expression) -> bool {
    match e {
        Expression::FunctionCall(_) => true,
        Expression::Symbol(tok) => matches!(tok.token_type(), TokenType::Symbol { symbol: Symbol::Ellipsis }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::export::RouteMask;

    fn reply_code(args: &[Option<LitArg>]) -> Result<(), String> {
        match args.first() {
            Some(Some(LitArg::Int(code))) if !(100..=699).contains(code) => Err(format!("reply code {code} is out of range 100-699")),
            Some(Some(LitArg::Bool(_) | LitArg::Nil)) => Err("reply code must be a number".into()),
            _ => Ok(()),
        }
    }

    fn usrloc_table(args: &[Option<LitArg>]) -> Result<(), String> {
        match args.first() {
            Some(Some(LitArg::Str(t))) if t != "location" && t != "aliases" => Err(format!("unknown usrloc table '{t}'")),
            _ => Ok(()),
        }
    }

    fn regex_arg(args: &[Option<LitArg>]) -> Result<(), String> {
        match args.get(1) {
            Some(Some(LitArg::Str(re))) => regex::Regex::new(re)
                .map(|_| ())
                .map_err(|_| format!("regex {re:?} does not compile")),
            _ => Ok(()),
        }
    }

    fn exports() -> Vec<Export> {
        vec![
            Export::new("sl_send_reply", 2, 2, RouteMask::REQ_LIKE).with_fixup(reply_code),
            Export::new("sl_reply_error", 0, 0, RouteMask::REQ_LIKE),
            Export::new("save", 1, 2, RouteMask::REQUEST).with_fixup(usrloc_table),
            Export::new("lookup", 1, 1, RouteMask::REQUEST).with_fixup(usrloc_table),
            Export::new("t_relay", 0, 2, RouteMask::REQ_LIKE),
            Export::new("t_on_reply", 1, 1, RouteMask::REQ_LIKE),
            Export::new("t_on_failure", 1, 1, RouteMask::REQ_LIKE),
            Export::new("t_on_branch", 1, 1, RouteMask::REQ_LIKE),
            Export::new("record_route", 0, 0, RouteMask::REQUEST),
            Export::new("loose_route", 0, 0, RouteMask::REQUEST),
            Export::new("mf_process_maxfwd_header", 1, 1, RouteMask::REQUEST),
            Export::new("regex_match", 2, 2, RouteMask::ANY).with_fixup(regex_arg),
            Export::new("log", 1, 2, RouteMask::ANY),
            Export::new("modparam", 3, 3, RouteMask::ANY),
            Export::new("append_hf", 1, u8::MAX, RouteMask::ANY),
        ]
    }

    const LUA_GLOBALS: &[&str] = &[
        "print",
        "pairs",
        "ipairs",
        "type",
        "tostring",
        "tonumber",
        "string",
        "table",
        "math",
        "error",
        "pcall",
        "select",
        "msg",
        "route",
        "onreply_route",
        "failure_route",
        "branch_route",
    ];

    fn route_exists(kind: RouteKind, key: &RouteKey) -> bool {
        use RouteKey::{Name, Num};
        match (kind, key) {
            (RouteKind::Request, Name(n)) => n == "main" || n == "pstn",
            (RouteKind::Request, Num(n)) => *n == 1,
            (RouteKind::OnReply, Num(n)) => *n == 1,
            (RouteKind::Failure, Num(n)) => *n == 1,
            _ => false,
        }
    }

    fn diagnostics(source: &str) -> Vec<Diagnostic> {
        let exports = exports();
        let is_global = |n: &str| LUA_GLOBALS.contains(&n) || exports.iter().any(|e| e.name == n);
        check(&CheckInput {
            file: "test.lua",
            source,
            exports: &exports,
            is_global: &is_global,
            routes: &route_exists,
        })
    }

    /// "line:col: message" for each diagnostic.
    fn run(source: &str) -> Vec<String> {
        diagnostics(source)
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect()
    }

    fn messages(source: &str) -> Vec<String> {
        diagnostics(source).into_iter().map(|d| d.message).collect()
    }

    const EXAMPLE: &str = r#"listen = "udp:127.0.0.1:5060"
modparam("tm", "fr_timer", 10)
function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then route[1](); return end
  if regex_match(msg.ruri, "^sip:011[0-9]*@") then route.pstn() return end
  t_on_reply("1")
  route(1)
end
route[1] = function()
  if not t_relay() then sl_reply_error() end
end
onreply_route[1] = function() if msg.status == 180 then log("ringing") end end
local function helper(x) return x + 1 end
"#;

    #[test]
    fn example_script_is_clean() {
        assert_eq!(run(EXAMPLE), Vec::<String>::new());
    }

    #[test]
    fn diagnostic_display_is_file_line_col_message() {
        let d = &diagnostics("\n  foo()\n")[0];
        assert_eq!(d.to_string(), "test.lua:2:3: unknown function 'foo'");
    }

    // --- 1. unknown functions -------------------------------------------

    #[test]
    fn unknown_function_is_reported_at_its_name() {
        assert_eq!(
            run("function route.main()\n  if x then frobnicate(1) end\nend"),
            ["2:13: unknown function 'frobnicate'"]
        );
    }

    #[test]
    fn unknown_function_suggests_close_export() {
        assert_eq!(
            messages("sl_send_rply(404, 'x')"),
            ["unknown function 'sl_send_rply'; did you mean 'sl_send_reply'?"]
        );
        // A transposition is one edit.
        assert_eq!(messages("t_rleay()"), ["unknown function 't_rleay'; did you mean 't_relay'?"]);
    }

    #[test]
    fn unknown_function_far_from_exports_has_no_suggestion() {
        assert_eq!(messages("completely_different()"), ["unknown function 'completely_different'"]);
    }

    #[test]
    fn lua_globals_and_exports_are_known() {
        assert!(run("print(tostring(1)) pcall(error, 'x') t_relay()").is_empty());
    }

    #[test]
    fn globals_assigned_anywhere_are_known() {
        let src = r#"
function route.main()
  early()          -- defined further down
  deep()           -- assigned inside another function
  viaG()
  viaG2()
  viaField()
end
function early() end
local function setup()
  if true then deep = function() end end
end
_G.viaG = print
_G["viaG2"] = print
function _G.viaField() end
"#;
        assert_eq!(run(src), Vec::<String>::new());
    }

    #[test]
    fn assignment_to_a_local_does_not_define_a_global() {
        let src = "local foo\nfoo = function() end\nfunction bar() foo() end\ndo local baz; function baz() end end\nbaz()";
        assert_eq!(run(src), ["5:1: unknown function 'baz'"]);
    }

    #[test]
    fn calls_through_tables_and_methods_are_not_flagged() {
        let src = r#"
local t = {}
function route.main()
  local v = msg:header("Via")
  string.format("%d", 1)
  t.y()
  nosuch.field()
  nosuch:method()
  ("x"):rep(2)
end
"#;
        assert_eq!(run(src), Vec::<String>::new());
    }

    #[test]
    fn only_calls_are_checked_not_reads() {
        assert!(run("local x = undefined_value; print(another_one)").is_empty());
    }

    // --- scope tracking --------------------------------------------------

    #[test]
    fn local_shadows_global_then_goes_out_of_scope() {
        let src = "do\n  local foo = print\n  foo()\nend\nfoo()\n";
        assert_eq!(run(src), ["5:1: unknown function 'foo'"]);
    }

    #[test]
    fn local_named_like_an_export_is_not_the_export() {
        let src = "do\n  local save = function() end\n  save()\nend\nsave()\n";
        assert_eq!(run(src), ["5:1: save expects 1 or 2 arguments, got 0"]);
    }

    #[test]
    fn local_is_not_in_scope_in_its_own_initializer() {
        assert_eq!(run("local foo = foo()"), ["1:13: unknown function 'foo'"]);
    }

    #[test]
    fn local_used_before_its_declaration_is_a_global() {
        let src = "function route.main() helper() end\nlocal function helper() end\n";
        assert_eq!(run(src), ["1:23: unknown function 'helper'"]);
    }

    #[test]
    fn local_assigned_function_does_not_see_itself() {
        // Unlike `local function f`, `local f = function` binds f after the body.
        assert_eq!(run("local f = function(n) return f(n) end"), ["1:30: unknown function 'f'"]);
    }

    #[test]
    fn local_function_can_recurse() {
        assert!(run("local function f(n) if n > 0 then return f(n - 1) end end").is_empty());
    }

    #[test]
    fn function_parameters_are_locals() {
        let src = "local function apply(cb, ...)\n  cb(...)\nend\ncb()\n";
        assert_eq!(run(src), ["4:1: unknown function 'cb'"]);
    }

    #[test]
    fn method_declaration_has_self() {
        let src = "local obj = {}\nfunction obj:run() self() end\nself()";
        assert_eq!(run(src), ["3:1: unknown function 'self'"]);
    }

    #[test]
    fn generic_for_variables_are_scoped_to_the_loop() {
        let src = "local t = {}\nfor k, v in pairs(t) do\n  k() v()\nend\nv()\n";
        assert_eq!(run(src), ["5:1: unknown function 'v'"]);
    }

    #[test]
    fn for_iterator_expression_is_outside_the_loop_scope() {
        assert_eq!(run("for f in f() do f() end"), ["1:10: unknown function 'f'"]);
    }

    #[test]
    fn numeric_for_variable_is_scoped_to_the_loop() {
        let src = "for i = 1, 3 do i() end\ni()";
        assert_eq!(run(src), ["2:1: unknown function 'i'"]);
    }

    #[test]
    fn repeat_until_condition_sees_body_locals() {
        let src = "repeat\n  local done = function() return true end\nuntil done()\ndone()\n";
        assert_eq!(run(src), ["4:1: unknown function 'done'"]);
    }

    #[test]
    fn while_and_if_blocks_open_scopes() {
        let src = "while true do local a = print; a() break end\nif x then local b = print; b() else b() end\na()";
        assert_eq!(run(src), ["2:37: unknown function 'b'", "3:1: unknown function 'a'"]);
    }

    #[test]
    fn nested_functions_see_enclosing_locals() {
        let src = r#"
local function outer(cb)
  local inner = function() cb() end
  return function() inner() cb() end
end
inner()
"#;
        assert_eq!(run(src), ["6:1: unknown function 'inner'"]);
    }

    #[test]
    fn locally_shadowed_route_table_is_not_a_route() {
        assert!(run("local route = {}\nroute[7]()\nroute(7)").is_empty());
    }

    // --- 2. arity --------------------------------------------------------

    #[test]
    fn too_few_arguments() {
        assert_eq!(
            run("function route.main()\n  sl_send_reply(404)\nend"),
            ["2:3: sl_send_reply expects 2 arguments, got 1"]
        );
    }

    #[test]
    fn too_many_arguments() {
        assert_eq!(messages("record_route(1)"), ["record_route expects no arguments, got 1"]);
        assert_eq!(messages("save('location', 0, 1)"), ["save expects 1 or 2 arguments, got 3"]);
        assert_eq!(messages("t_relay(1, 2, 3)"), ["t_relay expects 0 to 2 arguments, got 3"]);
        assert_eq!(messages("lookup()"), ["lookup expects 1 argument, got 0"]);
        assert_eq!(messages("append_hf()"), ["append_hf expects at least 1 argument, got 0"]);
    }

    #[test]
    fn correct_arity_is_accepted() {
        assert!(run("save('location') save('location', 1) t_relay() append_hf('a', 'b', 'c')").is_empty());
    }

    #[test]
    fn string_and_table_call_syntax_count_one_argument() {
        assert!(run("lookup 'location'  lookup { }").is_empty());
        assert_eq!(messages("sl_send_reply '404'"), ["sl_send_reply expects 2 arguments, got 1"]);
    }

    #[test]
    fn variadic_last_argument_skips_the_count() {
        let src = "local function f(...) record_route(...) sl_send_reply(table.unpack({})) end\nsl_reply_error(f())";
        assert!(run(src).is_empty());
        // A parenthesised call yields one value.
        assert_eq!(
            messages("sl_reply_error((print()))"),
            ["sl_reply_error expects no arguments, got 1"]
        );
    }

    #[test]
    fn script_redefining_an_export_name_is_its_own_function() {
        assert!(run("function save() end\nsave()").is_empty());
    }

    // --- 3. fixups -------------------------------------------------------

    #[test]
    fn fixup_rejects_literal_argument() {
        assert_eq!(
            run("function route.main()\n  sl_send_reply(999, \"Huh\")\nend"),
            ["2:3: sl_send_reply: reply code 999 is out of range 100-699"]
        );
        assert_eq!(
            messages("sl_send_reply(-1, 'x')"),
            ["sl_send_reply: reply code -1 is out of range 100-699"]
        );
        assert_eq!(messages("lookup('locaton')"), ["lookup: unknown usrloc table 'locaton'"]);
        assert_eq!(messages("sl_send_reply(nil, 'x')"), ["sl_send_reply: reply code must be a number"]);
    }

    #[test]
    fn fixup_sees_unknown_values_as_none() {
        assert!(run("local c = 999\nsl_send_reply(c, 'x') sl_send_reply(c + 1, msg.method)").is_empty());
    }

    #[test]
    fn fixup_gets_decoded_strings() {
        // "\\d" in Lua is the regex \d, which compiles.
        assert!(run(r#"regex_match(msg.ruri, "^sip:\\+?\\d+@")"#).is_empty());
        assert!(run(r#"regex_match(msg.ruri, [[^sip:\+?\d+@]])"#).is_empty());
        assert_eq!(
            messages(r#"regex_match(msg.ruri, "^sip:(011")"#),
            [r#"regex_match: regex "^sip:(011" does not compile"#]
        );
        // Hex numerals are integers too.
        assert_eq!(
            messages("sl_send_reply(0x10, 'x')"),
            ["sl_send_reply: reply code 16 is out of range 100-699"]
        );
    }

    #[test]
    fn fixup_is_not_run_when_arity_is_wrong() {
        assert_eq!(messages("sl_send_reply(999)"), ["sl_send_reply expects 2 arguments, got 1"]);
    }

    // --- 4. route kinds --------------------------------------------------

    #[test]
    fn export_not_allowed_in_onreply_route() {
        let src = "onreply_route[1] = function()\n  save(\"location\")\nend\n";
        assert_eq!(run(src), ["2:3: save() is not allowed in onreply_route"]);
    }

    #[test]
    fn export_allowed_in_request_route() {
        assert!(run("function route.main() save('location') end\nroute[1] = function() save('location') end").is_empty());
    }

    #[test]
    fn route_kind_from_every_definition_form() {
        let src = r#"
function failure_route.f() record_route() end
failure_route[1] = function() t_relay() record_route() end
branch_route["b"] = function() loose_route() end
onreply_route.named = function() sl_send_reply(200, "OK") end
"#;
        assert_eq!(
            run(src),
            [
                "2:28: record_route() is not allowed in failure_route",
                "3:41: record_route() is not allowed in failure_route",
                "4:32: loose_route() is not allowed in branch_route",
                "5:34: sl_send_reply() is not allowed in onreply_route",
            ]
        );
    }

    #[test]
    fn routes_in_a_table_constructor_have_their_kind() {
        let src = "onreply_route = {\n  [1] = function() lookup('location') end,\n  named = function() log('x') end,\n}";
        assert_eq!(run(src), ["2:20: lookup() is not allowed in onreply_route"]);
    }

    #[test]
    fn nested_function_in_route_inherits_kind() {
        let src = "onreply_route[1] = function()\n  local function h() save('location') end\n  h()\n  local g = function() record_route() end\nend";
        assert_eq!(
            run(src),
            [
                "2:22: save() is not allowed in onreply_route",
                "4:24: record_route() is not allowed in onreply_route",
            ]
        );
    }

    #[test]
    fn helpers_outside_routes_are_not_guessed() {
        let src = "local function helper() save('location') end\nfunction h2() record_route() end\nonreply_route[1] = function() helper() h2() end";
        assert!(run(src).is_empty());
    }

    #[test]
    fn route_kind_does_not_leak_after_route_body() {
        let src = "onreply_route[1] = function() end\nsave('location')";
        assert!(run(src).is_empty());
    }

    // --- 5. route references ---------------------------------------------

    #[test]
    fn undefined_numbered_route_is_reported() {
        let src = "function route.main()\n  route[7]()\nend";
        assert_eq!(run(src), ["2:3: route[7] is not defined"]);
    }

    #[test]
    fn route_references_in_all_forms() {
        let src = r#"local r = route.nope
local r2 = route["also nope"]
route.pstn()
route["main"]()
route(1)
route(7)
route("1")
route("gone")
local f = failure_route[2]
"#;
        assert_eq!(
            run(src),
            [
                "1:11: route.nope is not defined",
                "2:12: route[\"also nope\"] is not defined",
                "6:7: route[7] is not defined",
                "8:7: route.gone is not defined",
                "9:11: failure_route[2] is not defined",
            ]
        );
    }

    #[test]
    fn assignment_to_a_route_is_a_definition() {
        assert!(run("route[9] = function() end\nroute.x = nil").is_empty());
        // ...but reading a field of an undefined route is a reference.
        assert_eq!(run("route[9].x = 1"), ["1:1: route[9] is not defined"]);
    }

    #[test]
    fn t_on_reply_numeric_string_is_a_numbered_route() {
        assert!(run("t_on_reply('1') t_on_reply(1) t_on_failure('1')").is_empty());
        assert_eq!(
            run("function route.main()\n  t_on_reply(\"2\")\nend"),
            ["2:14: onreply_route[2] is not defined (t_on_reply)"]
        );
    }

    #[test]
    fn t_on_failure_and_branch_map_to_their_tables() {
        assert_eq!(
            messages("t_on_failure('nat') t_on_branch(3) t_on_reply(x)"),
            [
                "failure_route.nat is not defined (t_on_failure)",
                "branch_route[3] is not defined (t_on_branch)",
            ]
        );
    }

    #[test]
    fn diagnostics_are_in_source_order() {
        let src = "route[8] = function() end\nfoo(route[7], bar())\n";
        assert_eq!(
            run(src),
            [
                "2:1: unknown function 'foo'",
                "2:5: route[7] is not defined",
                "2:15: unknown function 'bar'",
            ]
        );
    }

    // --- syntax ----------------------------------------------------------

    #[test]
    fn syntax_error_reports_its_line() {
        let src = "function route.main()\n  t_relay()\n  if x then\nend\n";
        let err = syntax_check("s.lua", src).unwrap_err();
        assert_eq!(err.file, "s.lua");
        // Like Lua: the missing `end` is noticed at the end of the file.
        assert_eq!(
            err.to_string(),
            "s.lua:5:1: syntax error: expected `end` to close function body block near end of file"
        );

        let src = "local a = 1\nlocal b = = 2\nlocal c = 3\n";
        let err = syntax_check("s.lua", src).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("near '='"), "{err}");
    }

    #[test]
    fn syntax_check_accepts_lua54() {
        let src = "local x <const> = 1 // 2\nlocal y <close> = nil\ngoto done\n::done::\nreturn x & 3";
        assert_eq!(syntax_check("s.lua", src), Ok(()));
        assert_eq!(syntax_check("s.lua", EXAMPLE), Ok(()));
    }

    #[test]
    fn check_reports_syntax_error_alone() {
        let d = diagnostics("foo()\nlocal = 3\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, 2);
        assert!(d[0].message.starts_with("syntax error"));
    }

    #[test]
    fn unterminated_string_is_a_syntax_error() {
        let err = syntax_check("s.lua", "local a = 1\nlocal s = \"abc\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    // --- helpers ---------------------------------------------------------

    #[test]
    fn unescape_decodes_lua_escapes() {
        assert_eq!(unescape(r#"a\tb\\c\"d\'e"#).as_deref(), Some("a\tb\\c\"d'e"));
        assert_eq!(unescape(r"\65\066\x43\u{44}").as_deref(), Some("ABCD"));
        assert_eq!(unescape("a\\z  \n  b").as_deref(), Some("ab"));
        assert_eq!(unescape("a\\\nb").as_deref(), Some("a\nb"));
        assert_eq!(unescape(r"\q"), None);
        assert_eq!(unescape(r"\256"), None);
        assert_eq!(unescape(r"\xff"), None); // not UTF-8
    }

    #[test]
    fn long_string_drops_first_newline() {
        assert_eq!(long_string("\nabc\r\ndef"), "abc\ndef");
        assert_eq!(long_string("abc"), "abc");
    }

    #[test]
    fn call_key_maps_digit_strings_to_numbers() {
        assert_eq!(call_key(&LitArg::Str("1".into())), Some(RouteKey::Num(1)));
        assert_eq!(call_key(&LitArg::Str("pstn".into())), Some(RouteKey::Name("pstn".into())));
        assert_eq!(call_key(&LitArg::Int(4)), Some(RouteKey::Num(4)));
        assert_eq!(call_key(&LitArg::Nil), None);
    }

    #[test]
    fn route_key_path() {
        let path = |kind, key: RouteKey| route_path(kind, &key);
        assert_eq!(path(RouteKind::OnReply, RouteKey::Num(3)), "onreply_route[3]");
        assert_eq!(path(RouteKind::Request, RouteKey::Name("pstn".into())), "route.pstn");
        assert_eq!(path(RouteKind::Request, RouteKey::Name("end".into())), "route[\"end\"]");
    }

    #[test]
    fn edit_distance_counts_transpositions() {
        assert_eq!(edit_distance("save", "save"), 0);
        assert_eq!(edit_distance("sve", "save"), 1);
        assert_eq!(edit_distance("svae", "save"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
