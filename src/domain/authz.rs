//! Who may do what, apart from approving (see `policy`). Pure functions of the caller's name and
//! roles and the facts of the case; each refusal says what would have been needed.

use super::{DomainError, Role, UserName};
use std::collections::BTreeSet;

/// The roles that operate environments: lock, unlock, migrate, roll back, retry, cancel.
pub const OPERATOR_ROLES: [Role; 4] = [Role::DataOps, Role::DataOpsLead, Role::Dba, Role::Admin];

/// May `caller` operate (`verb`: "lock", "migrate", ...) `environment`? Operators may anywhere;
/// developers too where the environment needs no approval (development).
pub fn may_operate(
    caller: &UserName,
    roles: &[Role],
    environment: &str,
    environment_auto_approves: bool,
    verb: &str,
) -> Result<(), DomainError> {
    let operator = roles.iter().any(|r| OPERATOR_ROLES.contains(r));
    let developer_here = environment_auto_approves && roles.contains(&Role::Developer);
    if operator || developer_here {
        return Ok(());
    }
    Err(DomainError::Forbidden(format!(
        "{caller} may not {verb} in {environment}: that needs one of the roles data_ops, data_ops_lead, dba, admin{}",
        if environment_auto_approves {
            ", developer"
        } else {
            ""
        }
    )))
}

/// The authors of a migration (everyone who wrote a version of its scripts) may cancel or
/// amend it; otherwise this is operating.
pub fn may_change_own_or_operate(
    caller: &UserName,
    roles: &[Role],
    authors: &[UserName],
    environment: &str,
    environment_auto_approves: bool,
    verb: &str,
) -> Result<(), DomainError> {
    if authors.contains(caller) {
        return Ok(());
    }
    may_operate(caller, roles, environment, environment_auto_approves, verb).map_err(|_| {
        DomainError::Forbidden(format!(
            "{caller} may not {verb} it: only its authors ({}) or an operator (data_ops, data_ops_lead, dba, admin) may",
            authors
                .iter()
                .map(UserName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Rejecting needs a role that could approve the deployment, or an operator role.
pub fn may_reject(
    caller: &UserName,
    roles: &[Role],
    approving_roles: &BTreeSet<Role>,
    environment: &str,
) -> Result<(), DomainError> {
    if roles
        .iter()
        .any(|r| approving_roles.contains(r) || OPERATOR_ROLES.contains(r))
    {
        return Ok(());
    }
    Err(DomainError::Forbidden(format!(
        "{caller} may not reject in {environment}: that needs one of the approving roles ({}) or an operator role",
        approving_roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// An emergency override needs a data_ops_lead or an admin who wrote no version of the
/// migration, and a reason: so at least two people, the author and the one who forces it, are
/// involved in every emergency.
pub fn may_force(
    caller: &UserName,
    roles: &[Role],
    authors: &[UserName],
    reason: &str,
) -> Result<(), DomainError> {
    if authors.contains(caller) {
        return Err(DomainError::Forbidden(format!(
            "{caller} wrote a version of this migration (authors: {}) and cannot force it: an emergency override must come from someone else holding data_ops_lead or admin",
            authors
                .iter()
                .map(UserName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !(roles.contains(&Role::DataOpsLead) || roles.contains(&Role::Admin)) {
        return Err(DomainError::Forbidden(format!(
            "{caller} may not force a deployment: an emergency override needs the role data_ops_lead or admin"
        )));
    }
    if reason.trim().is_empty() {
        return Err(DomainError::Invalid(
            "reason: an emergency override needs a reason".into(),
        ));
    }
    Ok(())
}

/// Whether, in an environment, an author's own word is enough for their own migration: they
/// may approve it, and dry-run it or test its rollback before anyone approved it. One rule for
/// all three: true where the environment approves itself (`auto_approve`: no one reviews there
/// anyway) or allows self-approval.
pub fn authors_act_alone(environment_auto_approves: bool, allow_self_approval: bool) -> bool {
    environment_auto_approves || allow_self_approval
}

/// Running a migration's SQL before it is approved (a dry run, a rollback test) where the
/// environment takes approvals: never by one of its authors, who could otherwise run
/// unreviewed SQL there (a function with effects outside the transaction, dblink, ...).
pub fn may_try_unapproved(
    caller: &UserName,
    authors: &[UserName],
    environment: &str,
    authors_act_alone: bool,
    what: &str,
) -> Result<(), DomainError> {
    if authors_act_alone || !authors.contains(caller) {
        return Ok(());
    }
    Err(DomainError::Forbidden(format!(
        "{caller} wrote this migration and may not {what} it in {environment} before it is approved: someone who did not write it may"
    )))
}

/// Requeueing dead notifications and sending test messages: a data_ops_lead or an admin.
pub fn may_manage_notifications(
    caller: &UserName,
    roles: &[Role],
    what: &str,
) -> Result<(), DomainError> {
    may_lead(caller, roles, what)
}

/// What only a data_ops_lead or an admin may do (`what`, e.g. "roll back a cancelled
/// deployment").
pub fn may_lead(caller: &UserName, roles: &[Role], what: &str) -> Result<(), DomainError> {
    if roles
        .iter()
        .any(|r| matches!(r, Role::DataOpsLead | Role::Admin))
    {
        Ok(())
    } else {
        Err(DomainError::Forbidden(format!(
            "{caller} may not {what}: only a data_ops_lead or an admin may"
        )))
    }
}

/// Which owed post-emergency review `caller` may record: the first of the `open` roles they
/// hold. A review is a second pair of eyes, so it never comes from an author of the scripts or
/// from someone who approved (or forced) the deployment, and one person records one review.
pub fn may_review(
    caller: &UserName,
    roles: &[Role],
    authors: &[UserName],
    approvers: &[&str],
    reviewers: &[&str],
    open: &[Role],
    deployment: &str,
) -> Result<Role, DomainError> {
    if open.is_empty() {
        return Err(DomainError::Conflict(format!(
            "deployment {deployment} owes no review (only an emergency override opens them, and each is recorded once)"
        )));
    }
    if authors.contains(caller) {
        return Err(DomainError::Forbidden(format!(
            "{caller} is an author of {deployment}: its review comes from someone who did not write it"
        )));
    }
    if approvers.contains(&caller.as_str()) {
        return Err(DomainError::Forbidden(format!(
            "{caller} approved {deployment}: its review comes from someone who did not sign it off"
        )));
    }
    if reviewers.contains(&caller.as_str()) {
        return Err(DomainError::Conflict(format!(
            "{caller} has already recorded a review of {deployment}; each owed role needs its own reviewer"
        )));
    }
    open.iter()
        .copied()
        .find(|role| roles.contains(role))
        .ok_or_else(|| {
            DomainError::Forbidden(format!(
                "{caller} holds none of the roles whose review is owed ({})",
                open.iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    #[test]
    fn developers_operate_only_environments_without_approvals() {
        let dev = user("dev");
        assert!(may_operate(&dev, &[Role::Developer], "development", true, "lock").is_ok());
        let e = may_operate(&dev, &[Role::Developer], "production", false, "lock").unwrap_err();
        assert_eq!(
            e.to_string(),
            "dev may not lock in production: that needs one of the roles data_ops, data_ops_lead, dba, admin"
        );
        assert!(may_operate(&dev, &[Role::Dba], "production", false, "migrate").is_ok());
    }

    #[test]
    fn authors_change_their_own_and_overrides_need_a_lead_and_a_reason() {
        let dev = user("dev");
        assert!(
            may_change_own_or_operate(
                &dev,
                &[Role::Developer],
                &[user("ann"), dev.clone()],
                "staging",
                false,
                "cancel"
            )
            .is_ok()
        );
        assert!(
            may_change_own_or_operate(
                &dev,
                &[Role::Developer],
                &[user("ann")],
                "staging",
                false,
                "cancel"
            )
            .is_err()
        );
        let ann = [user("ann")];
        assert!(may_force(&dev, &[Role::Dba], &ann, "outage").is_err());
        assert!(matches!(
            may_force(&dev, &[Role::DataOpsLead], &ann, " "),
            Err(DomainError::Invalid(_))
        ));
        assert!(may_force(&dev, &[Role::Admin], &ann, "outage").is_ok());
        // The author cannot force their own migration, whatever roles they hold.
        let own = [user("ann"), dev.clone()];
        assert!(matches!(
            may_force(&dev, &[Role::Admin, Role::DataOpsLead], &own, "outage"),
            Err(DomainError::Forbidden(_))
        ));
        let approving: BTreeSet<Role> = [Role::Cto].into();
        assert!(may_reject(&dev, &[Role::Cto], &approving, "production").is_ok());
        assert!(may_reject(&dev, &[Role::Developer], &approving, "production").is_err());
    }

    #[test]
    fn reviews_come_from_people_not_involved() {
        let name = |n: &str| n.parse::<UserName>().unwrap();
        let open = [Role::DataOpsLead, Role::Dba];
        let authors = [name("devlead")];
        let review = |who: &str, roles: &[Role], reviewers: &[&str]| {
            may_review(
                &name(who),
                roles,
                &authors,
                &["admin"],
                reviewers,
                &open,
                "d",
            )
        };
        assert!(review("devlead", &[Role::DataOpsLead], &[]).is_err());
        assert!(review("admin", &[Role::Admin, Role::Dba], &[]).is_err());
        assert!(matches!(
            review("dba", &[Role::Dba], &["dba"]),
            Err(DomainError::Conflict(_))
        ));
        assert!(review("tech", &[Role::TechLead], &[]).is_err());
        assert_eq!(review("dba", &[Role::Dba], &[]).unwrap(), Role::Dba);
        assert!(matches!(
            may_review(&name("dba"), &[Role::Dba], &[], &[], &[], &[], "d"),
            Err(DomainError::Conflict(_))
        ));
    }
}
