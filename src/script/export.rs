//! Export tables: each SER module declares its script functions once —
//! name, argument count, the route types where the call is allowed, and a
//! fixup that validates literal arguments at load time (Kamailio's
//! `cmd_export_t`). `serlua check` and the runtime both read these.

/// Kinds of route blocks (ser.cfg `route`, `onreply_route`,
/// `failure_route`, `branch_route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `route.main` and `route[n]` / `route.name`: request routes.
    Request,
    /// `onreply_route[n]`: replies of a transaction (`t_on_reply`).
    OnReply,
    /// `failure_route[n]`: best final reply >= 300 (`t_on_failure`).
    Failure,
    /// `branch_route[n]`: each outgoing branch (`t_on_branch`).
    Branch,
}

impl RouteKind {
    /// The global table that holds routes of this kind.
    pub fn table(self) -> &'static str {
        match self {
            RouteKind::Request => "route",
            RouteKind::OnReply => "onreply_route",
            RouteKind::Failure => "failure_route",
            RouteKind::Branch => "branch_route",
        }
    }

    /// The bit of this kind in a [`RouteMask`].
    pub fn bit(self) -> RouteMask {
        match self {
            RouteKind::Request => RouteMask::REQUEST,
            RouteKind::OnReply => RouteMask::ONREPLY,
            RouteKind::Failure => RouteMask::FAILURE,
            RouteKind::Branch => RouteMask::BRANCH,
        }
    }
}

/// Set of route kinds where a primitive may be called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteMask(pub u8);

impl RouteMask {
    /// Request routes.
    pub const REQUEST: RouteMask = RouteMask(1);
    /// onreply routes.
    pub const ONREPLY: RouteMask = RouteMask(2);
    /// failure routes.
    pub const FAILURE: RouteMask = RouteMask(4);
    /// branch routes.
    pub const BRANCH: RouteMask = RouteMask(8);
    /// Request, failure and branch routes: the ones that act on a request.
    pub const REQ_LIKE: RouteMask = RouteMask(1 | 4 | 8);
    /// Every kind of route.
    pub const ANY: RouteMask = RouteMask(15);

    /// True when `kind` is in the mask.
    pub fn allows(self, kind: RouteKind) -> bool {
        self.0 & kind.bit().0 != 0
    }

    /// Union of two masks.
    pub const fn or(self, other: RouteMask) -> RouteMask {
        RouteMask(self.0 | other.0)
    }
}

/// A literal argument as the static checker sees it in the script source;
/// `None` in a fixup's slice means the argument is an expression whose
/// value is only known at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum LitArg {
    /// A string literal.
    Str(String),
    /// An integer literal.
    Int(i64),
    /// `true` or `false`.
    Bool(bool),
    /// `nil`.
    Nil,
}

/// A fixup validates literal arguments once, at load time (a regex that
/// does not compile, a reply code out of range …). Err carries the message.
pub type Fixup = fn(&[Option<LitArg>]) -> Result<(), String>;

/// One script function a module exports.
#[derive(Clone, Copy, Debug)]
pub struct Export {
    /// Name the script calls it by (the ser.cfg name).
    pub name: &'static str,
    /// Fewest arguments.
    pub min_args: u8,
    /// Most arguments.
    pub max_args: u8,
    /// Route kinds where it may be called.
    pub routes: RouteMask,
    /// Load-time check of literal arguments.
    pub fixup: Option<Fixup>,
}

impl Export {
    /// An export with no fixup.
    pub const fn new(name: &'static str, min_args: u8, max_args: u8, routes: RouteMask) -> Export {
        Export {
            name,
            min_args,
            max_args,
            routes,
            fixup: None,
        }
    }

    /// The same export with a fixup.
    pub const fn with_fixup(self, fixup: Fixup) -> Export {
        Export {
            fixup: Some(fixup),
            ..self
        }
    }
}

/// The key of a route in its table: `route[1]` is `Num(1)`, `route.pstn`
/// is `Name("pstn")`. `t_on_reply("1")` names `onreply_route[1]`: a
/// numeric string maps to `Num`, as ser.cfg's route numbers do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// `route[n]`.
    Num(i64),
    /// `route.name`.
    Name(String),
}

impl RouteKey {
    /// Parses a route name given as a string (`"1"` → `Num(1)`).
    pub fn from_text(s: &str) -> RouteKey {
        match s.trim().parse::<i64>() {
            Ok(n) => RouteKey::Num(n),
            Err(_) => RouteKey::Name(s.to_string()),
        }
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::Num(n) => write!(f, "[{n}]"),
            RouteKey::Name(s) => write!(f, ".{s}"),
        }
    }
}

/// Fixup helper: checks that the first argument, when it is a literal
/// (`6` or `"6"`, as ser.cfg writes numbers in strings), is an integer in
/// `range`; `what` names it in the message ("flag", "reply code").
pub fn check_int_arg(args: &[Option<LitArg>], what: &str, range: std::ops::RangeInclusive<i64>) -> Result<(), String> {
    let v = match args.first() {
        Some(Some(LitArg::Int(i))) => *i,
        Some(Some(LitArg::Str(s))) => s.trim().parse().map_err(|_| format!("{what} '{s}' is not a number"))?,
        _ => return Ok(()),
    };
    if range.contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} {v} is outside {}..{}", range.start(), range.end()))
    }
}
