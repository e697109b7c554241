//! Approval policy evaluation: which approvals count, what is still missing.

use super::{DomainError, Role, UserName};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What an environment requires for a migration of a given effective risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApprovalPolicy {
    /// Each entry must be filled by a distinct person signing as that role. A role may appear
    /// more than once (two data_ops approvers).
    pub required_roles: Vec<Role>,
    /// How many distinct people must approve in all. When larger than `required_roles`, the
    /// extra approvals may come from any of the required roles.
    pub required_approvals: u32,
    /// Hours after submission before a deployment still awaiting approval expires.
    pub timeout_hours: Option<u32>,
    /// Whether an emergency override may approve it without the full set.
    pub emergency_override: bool,
}

/// One recorded approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub approver: UserName,
    pub role: Role,
    /// The migration checksum the approver saw. Approvals of another checksum do not count.
    pub checksum: String,
}

/// How far the approvals of a deployment are from satisfying its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PolicyProgress {
    pub satisfied: bool,
    /// Roles still to be filled, one entry per missing approval.
    pub missing_roles: Vec<Role>,
    /// Approvals still needed beyond the named roles, from any of `allowed_roles`.
    pub additional_approvals_needed: u32,
    /// Distinct people whose approval currently counts.
    pub approvals_counted: u32,
}

/// A request to approve, with everything needed to judge it.
pub struct ApprovalRequest<'a> {
    pub approver: &'a UserName,
    pub approver_roles: &'a [Role],
    pub role: Role,
    /// Everyone who wrote any version of the scripts: none of them may approve outside
    /// environments that allow self-approval.
    pub authors: &'a [UserName],
    pub allow_self_approval: bool,
    pub environment: &'a str,
    /// The migration's checksum now.
    pub checksum: &'a str,
    /// The checksum of the scripts the approver reviewed, as they named it. Required wherever
    /// self-approval is not allowed; a different one than `checksum` is refused.
    pub reviewed_checksum: Option<&'a str>,
}

impl ApprovalPolicy {
    pub fn allowed_roles(&self) -> BTreeSet<Role> {
        self.required_roles.iter().copied().collect()
    }

    fn multiplicity(&self) -> BTreeMap<Role, u32> {
        let mut needed = BTreeMap::new();
        for role in &self.required_roles {
            *needed.entry(*role).or_insert(0) += 1;
        }
        needed
    }

    fn extra_slots(&self) -> u32 {
        self.required_approvals
            .saturating_sub(self.required_roles.len() as u32)
    }

    /// Evaluates the approvals that bind to `checksum`; others are void.
    pub fn progress(&self, approvals: &[ApprovalRecord], checksum: &str) -> PolicyProgress {
        let mut counts: BTreeMap<Role, u32> = BTreeMap::new();
        let mut people = BTreeSet::new();
        for approval in approvals.iter().filter(|a| a.checksum == checksum) {
            // One person fills at most one role: a second approval by the same person is
            // ignored here (the service also refuses to record it).
            if people.insert(&approval.approver) {
                *counts.entry(approval.role).or_insert(0) += 1;
            }
        }
        let mut missing_roles = Vec::new();
        let mut surplus = 0;
        for (role, needed) in self.multiplicity() {
            let have = counts.get(&role).copied().unwrap_or(0);
            for _ in have..needed {
                missing_roles.push(role);
            }
            surplus += have.saturating_sub(needed);
        }
        // Approvals in roles outside the policy never count.
        let allowed = self.allowed_roles();
        let counted_people = counts
            .iter()
            .filter(|(role, _)| allowed.contains(role))
            .map(|(_, n)| n)
            .sum();
        let extra_filled = surplus.min(self.extra_slots());
        let additional_approvals_needed = self.extra_slots() - extra_filled;
        PolicyProgress {
            satisfied: missing_roles.is_empty() && additional_approvals_needed == 0,
            missing_roles,
            additional_approvals_needed,
            approvals_counted: counted_people,
        }
    }
}

fn role_list(roles: impl IntoIterator<Item = Role>) -> String {
    roles
        .into_iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges an approval against the policy and the approvals already recorded. On success returns
/// the progress the policy will have once the approval is recorded.
pub fn check_approval(
    policy: &ApprovalPolicy,
    existing: &[ApprovalRecord],
    request: &ApprovalRequest<'_>,
) -> Result<PolicyProgress, DomainError> {
    if !request.approver_roles.contains(&request.role) {
        return Err(DomainError::Forbidden(format!(
            "{} does not hold the role {} (holds: {})",
            request.approver,
            request.role,
            role_list(request.approver_roles.iter().copied())
        )));
    }
    let allowed = policy.allowed_roles();
    if !allowed.contains(&request.role) {
        return Err(DomainError::Invalid(format!(
            "role {} is not one this deployment needs in {} (needs: {})",
            request.role,
            request.environment,
            role_list(allowed)
        )));
    }
    if request.authors.contains(request.approver) && !request.allow_self_approval {
        return Err(DomainError::Forbidden(format!(
            "{} wrote a version of this migration (authors: {}) and cannot approve it in {}: an approval must come from someone who did not write it",
            request.approver,
            request
                .authors
                .iter()
                .map(UserName::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            request.environment
        )));
    }
    let current: Vec<&ApprovalRecord> = existing
        .iter()
        .filter(|a| a.checksum == request.checksum)
        .collect();
    if let Some(previous) = current.iter().find(|a| &a.approver == request.approver) {
        return Err(DomainError::Conflict(format!(
            "{} already approved this deployment as {}; one person fills at most one role",
            request.approver, previous.role
        )));
    }
    // An approval is of the scripts the approver read: a script changed since then is not what
    // they approved.
    match request
        .reviewed_checksum
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        Some(reviewed) if reviewed != request.checksum => {
            return Err(DomainError::Conflict(format!(
                "checksum: you reviewed {reviewed} but the migration now has the checksum {}: its scripts changed; read them again before approving",
                request.checksum
            )));
        }
        Some(_) => {}
        None if request.allow_self_approval => {}
        None => {
            return Err(DomainError::Invalid(format!(
                "checksum: an approval in {} must name the checksum of the scripts reviewed (the migration's `checksum`, now {})",
                request.environment, request.checksum
            )));
        }
    }
    let before = policy.progress(existing, request.checksum);
    if !before.missing_roles.contains(&request.role) && before.additional_approvals_needed == 0 {
        let fillers: Vec<&str> = current
            .iter()
            .filter(|a| a.role == request.role)
            .map(|a| a.approver.as_str())
            .collect();
        return Err(DomainError::Conflict(format!(
            "role {} is already filled by {}; still missing: {}",
            request.role,
            fillers.join(", "),
            role_list(before.missing_roles.iter().copied())
        )));
    }
    let mut after = existing.to_vec();
    after.push(ApprovalRecord {
        approver: request.approver.clone(),
        role: request.role,
        checksum: request.checksum.to_owned(),
    });
    Ok(policy.progress(&after, request.checksum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    fn production_high() -> ApprovalPolicy {
        ApprovalPolicy {
            required_roles: vec![Role::DataOpsLead, Role::Dba, Role::TechLead, Role::Cto],
            required_approvals: 4,
            timeout_hours: Some(24),
            emergency_override: true,
        }
    }

    fn staging() -> ApprovalPolicy {
        ApprovalPolicy {
            required_roles: vec![Role::DataOps],
            required_approvals: 2,
            timeout_hours: None,
            emergency_override: false,
        }
    }

    fn request<'a>(
        approver: &'a UserName,
        roles: &'a [Role],
        role: Role,
        author: &'a UserName,
    ) -> ApprovalRequest<'a> {
        ApprovalRequest {
            approver,
            approver_roles: roles,
            role,
            authors: std::slice::from_ref(author),
            allow_self_approval: false,
            environment: "production",
            checksum: "c1",
            reviewed_checksum: Some("c1"),
        }
    }

    #[test]
    fn production_high_needs_four_roles_in_any_order() {
        let policy = production_high();
        let author = user("dev");
        let mut approvals = Vec::new();
        let people = [
            ("cto1", Role::Cto),
            ("lead", Role::TechLead),
            ("dba1", Role::Dba),
            ("ops", Role::DataOpsLead),
        ];
        for (i, (name, role)) in people.iter().enumerate() {
            let name = user(name);
            let roles = [*role];
            let progress =
                check_approval(&policy, &approvals, &request(&name, &roles, *role, &author))
                    .unwrap();
            assert_eq!(progress.satisfied, i == 3);
            approvals.push(ApprovalRecord {
                approver: name,
                role: *role,
                checksum: "c1".into(),
            });
        }
    }

    #[test]
    fn staging_needs_two_distinct_data_ops() {
        let policy = staging();
        let author = user("dev");
        let ann = user("ann");
        let roles = [Role::DataOps];
        let p =
            check_approval(&policy, &[], &request(&ann, &roles, Role::DataOps, &author)).unwrap();
        assert!(!p.satisfied);
        assert_eq!(p.additional_approvals_needed, 1);
        let approvals = vec![ApprovalRecord {
            approver: ann.clone(),
            role: Role::DataOps,
            checksum: "c1".into(),
        }];
        let again = check_approval(
            &policy,
            &approvals,
            &request(&ann, &roles, Role::DataOps, &author),
        );
        assert!(matches!(again, Err(DomainError::Conflict(_))));
        let bob = user("bob");
        let p = check_approval(
            &policy,
            &approvals,
            &request(&bob, &roles, Role::DataOps, &author),
        )
        .unwrap();
        assert!(p.satisfied);
    }

    #[test]
    fn rules_on_role_author_and_checksum() {
        let policy = production_high();
        let author = user("dev");
        let dba = user("dba1");
        let err = check_approval(
            &policy,
            &[],
            &request(&dba, &[Role::Dba], Role::Cto, &author),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dba1 does not hold the role cto (holds: dba)"
        );
        let err = check_approval(
            &policy,
            &[],
            &request(&dba, &[Role::Developer], Role::Developer, &author),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not one this deployment needs"));
        let err = check_approval(
            &policy,
            &[],
            &request(&author, &[Role::Dba], Role::Dba, &author),
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::Forbidden(_)));
        // Whoever amended the script is an author too.
        let amender = user("ops");
        let authors = [author.clone(), amender.clone()];
        let mut by_amender = request(&amender, &[Role::DataOpsLead], Role::DataOpsLead, &author);
        by_amender.authors = &authors;
        let err = check_approval(&policy, &[], &by_amender).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ops wrote a version of this migration (authors: dev, ops) and cannot approve it in production: an approval must come from someone who did not write it"
        );
        // The approval names what was reviewed: another checksum conflicts, none is invalid
        // outside environments that allow self-approval.
        let mut stale_review = request(&dba, &[Role::Dba], Role::Dba, &author);
        stale_review.reviewed_checksum = Some("c0");
        assert!(matches!(
            check_approval(&policy, &[], &stale_review),
            Err(DomainError::Conflict(m)) if m.contains("c0") && m.contains("c1")
        ));
        stale_review.reviewed_checksum = None;
        assert!(matches!(
            check_approval(&policy, &[], &stale_review),
            Err(DomainError::Invalid(m)) if m.starts_with("checksum:")
        ));
        stale_review.allow_self_approval = true;
        assert!(check_approval(&policy, &[], &stale_review).is_ok());
        // An approval for an older checksum is void.
        let stale = vec![ApprovalRecord {
            approver: dba.clone(),
            role: Role::Dba,
            checksum: "old".into(),
        }];
        let p = policy.progress(&stale, "c1");
        assert!(p.missing_roles.contains(&Role::Dba));
        assert_eq!(p.approvals_counted, 0);
    }

    fn arbitrary_role() -> impl Strategy<Value = Role> {
        proptest::sample::select(Role::ALL.to_vec())
    }

    proptest! {
        /// No set of approvals from one person satisfies a policy needing two or more people,
        /// however many roles that person holds and signs as.
        #[test]
        fn one_person_never_satisfies_a_multi_person_policy(
            roles in proptest::collection::vec(arbitrary_role(), 1..6),
            extra in 0u32..3,
            signed in proptest::collection::vec(arbitrary_role(), 0..10),
        ) {
            let policy = ApprovalPolicy {
                required_approvals: (roles.len() as u32 + extra).max(2),
                required_roles: roles,
                timeout_hours: None,
                emergency_override: false,
            };
            let person = user("solo");
            let author = user("someone_else");
            let mut approvals = Vec::new();
            for role in signed {
                let req = ApprovalRequest {
                    approver: &person,
                    approver_roles: &Role::ALL,
                    role,
                    authors: std::slice::from_ref(&author),
                    allow_self_approval: false,
                    environment: "production",
                    checksum: "c",
                    reviewed_checksum: Some("c"),
                };
                if check_approval(&policy, &approvals, &req).is_ok() {
                    approvals.push(ApprovalRecord { approver: person.clone(), role, checksum: "c".into() });
                }
                // Even records the service would refuse must never satisfy the policy.
                approvals.push(ApprovalRecord { approver: person.clone(), role, checksum: "c".into() });
                prop_assert!(!policy.progress(&approvals, "c").satisfied);
            }
        }

        /// Approvals are counted per role in any order: permuting them never changes the verdict.
        #[test]
        fn order_of_approvals_does_not_matter(
            signed in proptest::collection::vec(arbitrary_role(), 0..8),
            seed in any::<u64>(),
        ) {
            let policy = production_high();
            let approvals: Vec<ApprovalRecord> = signed.iter().enumerate().map(|(i, role)| ApprovalRecord {
                approver: user(&format!("p{i}")), role: *role, checksum: "c".into(),
            }).collect();
            let mut shuffled = approvals.clone();
            let len = shuffled.len();
            if len > 1 {
                let mut s = seed;
                for i in (1..len).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (s >> 33) as usize % (i + 1));
                }
            }
            prop_assert_eq!(policy.progress(&approvals, "c").satisfied, policy.progress(&shuffled, "c").satisfied);
        }
    }
}
