"""Agent commands on a case and the decisions they lead to (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from complaints_resolution.domain import (
    ALLOWED,
    Case,
    allowed_commands,
    check_action,
    new_id,
    require,
)
from complaints_shared.errors import CommandRejected, Forbidden, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events import resolution as ev
from complaints_shared.policy import Policy
from complaints_shared.vocabulary import (
    MONEY_REMEDIES,
    ONE_LINE,
    Remedy,
    Severity,
    normalise_amount,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=ONE_LINE),
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
AMOUNT = (
    "a decimal number (a JSON number or string) with at most the currency's decimals;"
    ' answers show it as a string with exactly those decimals (10.5 EUR: "10.50")'
)
Role = ev.Role


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class By:
    """Who issues a command: the token's subject and their highest case-handling role."""

    id: str
    role: Role | None


class Owner(_Command):
    id: Name
    name: Name
    contact: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254)
    ] = Field(description="phone number or e-mail address the customer can reach the owner on")
    team: Name | None = None


class AssignCase(_Command):
    owner: Owner


class RequestClarification(_Command):
    questions: list[Text] = Field(min_length=1, max_length=10)


class ReceiveClarification(_Command):
    answer: Text


class IdentifyCause(_Command):
    what_happened: Text
    what_should_have_happened: Text
    what_went_wrong: Text
    root_cause: Name = Field(description="a code of the policy's root-cause taxonomy")
    responsible: Literal["us", "customer", "third_party"]


class ClassifyCase(_Command):
    """What the complaint is about, confirmed or corrected; a field left out keeps its value
    (``product: null`` clears the product)."""

    category: str | None = Field(None, max_length=60, description="a category of the policy")
    product: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = (
        Field(None, description="the product or service concerned")
    )
    severity: Severity | None = None
    reason: Text | None = None


class SolutionOption(_Command):
    remedy: Remedy
    description: Text
    amount: Decimal | None = Field(None, gt=0, max_digits=12, decimal_places=3, description=AMOUNT)
    currency: Currency | None = None

    @model_validator(mode="after")
    def _money(self) -> Self:
        if self.remedy in MONEY_REMEDIES and (self.amount is None or self.currency is None):
            raise ValueError(f"a {self.remedy.value} needs an amount and a currency")
        if (self.amount is None) != (self.currency is None):
            raise ValueError("give amount and currency together")
        if self.amount is not None and self.currency is not None:
            self.amount = normalise_amount(self.amount, self.currency)
        return self


class ProposeSolution(_Command):
    options: list[SolutionOption] = Field(min_length=1, max_length=5)


class AgreeSolution(_Command):
    option_id: int = Field(ge=1, description="the chosen option of the latest proposal")
    agreed_outcome: Text = Field(description="what the customer will have, in their words")
    indicators: list[Text] = Field(
        min_length=1, max_length=10, description="how both sides will know it was delivered"
    )
    deadline: AwareDatetime


class RejectSolution(_Command):
    reason: Text


class PlanAction(_Command):
    description: Text
    owner: Name
    due_at: AwareDatetime


class CompleteAction(_Command):
    action_id: Name
    outcome: Text | None = None


class RequestCompensation(_Command):
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=3, description=AMOUNT)
    currency: Currency
    reason: Text

    @model_validator(mode="after")
    def _normalised(self) -> Self:
        self.amount = normalise_amount(self.amount, self.currency)
        return self


class DecideCompensation(_Command):
    request_id: Name
    note: Text | None = None


class Override(_Command):
    """A supervisor's decision (the caller's token must carry the role) to resolve anyway."""

    reason: Text


class ResolveCase(_Command):
    summary: Text = Field(description="what was done, for the customer and the record")
    override: Override | None = Field(
        None, description="a supervisor's decision to resolve with actions still open"
    )


class CloseCase(_Command):
    reason: Text | None = None


class ReopenCase(_Command):
    reason: Text


def _future(value: datetime, now: datetime, field: str) -> None:
    if value <= now:
        raise InputRejected(field, "must be in the future")


def assign(case: Case, c: AssignCase, by: By, now: datetime, policy: Policy) -> list[DomainEvent]:
    require(case, "assign")
    return [
        ev.CaseAssigned(
            owner=ev.Owner(**c.owner.model_dump()),
            assigned_by=by.id,
            previous_owner=case.owner.id if case.owner else None,
        )
    ]


def request_clarification(
    case: Case, c: RequestClarification, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "request_clarification")
    return [ev.ClarificationRequested(questions=tuple(c.questions), requested_by=by.id)]


def receive_clarification(
    case: Case, c: ReceiveClarification, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "receive_clarification")
    return [ev.ClarificationReceived(answer=c.answer, received_by=by.id)]


def identify_cause(
    case: Case, c: IdentifyCause, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "identify_cause")
    if c.root_cause not in policy.resolution.root_causes:
        raise InputRejected(
            "body.root_cause",
            f"unknown root cause {c.root_cause!r}",
            allowed=list(policy.resolution.root_causes),
        )
    return [
        ev.CauseIdentified(
            **c.model_dump(),
            identified_by=by.id,
            complaint_id=case.complaint_id,
            category=case.category,
            product=case.product,
            safety_incident=case.safety_incident,
        )
    ]


def classify(
    case: Case, c: ClassifyCase, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    """Confirm (the same values) or correct the classification; severity moves the SLA
    targets, and learning re-keys the complaint's occurrence when its product changes."""
    require(case, "classify")
    categories = policy.intake.categories
    if c.category is not None and c.category not in categories:
        raise InputRejected(
            "body.category", f"unknown category {c.category!r}", allowed=list(categories)
        )
    product = (c.product or None) if "product" in c.model_fields_set else case.product
    return [
        ev.CaseClassified(
            complaint_id=case.complaint_id,
            category=c.category or case.category,
            product=product,
            severity=c.severity or Severity(case.severity),
            previous=ev.Classification(
                category=case.category, product=case.product, severity=Severity(case.severity)
            ),
            classified_by=by.id,
            reason=c.reason,
        )
    ]


def propose_solution(
    case: Case, c: ProposeSolution, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "propose_solution")
    return [
        ev.SolutionProposed(
            proposal_id=new_id(),
            options=tuple(
                ev.SolutionOption(option_id=i, **o.model_dump())
                for i, o in enumerate(c.options, start=1)
            ),
            proposed_by=by.id,
        )
    ]


def agree_solution(
    case: Case, c: AgreeSolution, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "agree_solution")
    proposal = case.proposals[-1]
    option = next((o for o in proposal.options if o.option_id == c.option_id), None)
    if option is None:
        raise InputRejected(
            "body.option_id", f"the proposal has options 1..{len(proposal.options)}"
        )
    _future(c.deadline, now, "body.deadline")
    events: list[DomainEvent] = [
        ev.SolutionAgreed(
            proposal_id=proposal.proposal_id,
            option=option,
            agreed_outcome=c.agreed_outcome,
            indicators=tuple(c.indicators),
            deadline=c.deadline,
            recorded_by=by.id,
        )
    ]
    return events + _money_beyond_authority(option, by, policy)


def _money_beyond_authority(option: ev.SolutionOption, by: By, policy: Policy) -> list[DomainEvent]:
    """Money agreed in a solution takes the compensation path when it is beyond what the
    agreeing person may grant: a pending request for the authority it needs, which blocks
    ``resolve`` until it is approved or declined.  An amount in another currency than the
    policy's always needs a manager."""
    if option.remedy not in MONEY_REMEDIES or option.amount is None or option.currency is None:
        return []
    cp = policy.compensation
    same_currency = option.currency == cp.currency
    if same_currency and cp.may_grant(by.role, option.amount):
        return []
    return [
        ev.CompensationRequested(
            request_id=new_id(),
            amount=option.amount,
            currency=option.currency,
            reason=f"agreed solution: {option.remedy.value}",
            requested_by=by.id,
            needs=cp.authority_for(option.amount) if same_currency else "manager",
        )
    ]


def reject_solution(
    case: Case, c: RejectSolution, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "reject_solution")
    return [
        ev.SolutionRejected(
            proposal_id=case.proposals[-1].proposal_id, reason=c.reason, recorded_by=by.id
        )
    ]


def plan_action(
    case: Case, c: PlanAction, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "plan_action")
    _future(c.due_at, now, "body.due_at")
    return [
        ev.ActionPlanned(
            action_id=new_id(), description=c.description, owner=c.owner, due_at=c.due_at
        )
    ]


def complete_action(
    case: Case, c: CompleteAction, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "complete_action")
    action = check_action(case, c.action_id)
    if action.completed_at is not None:
        raise CommandRejected(
            case.state.value,
            "complete_action",
            allowed_commands(case),
            reason=f"action {c.action_id} is done already",
        )
    return [ev.ActionCompleted(action_id=c.action_id, completed_by=by.id, outcome=c.outcome)]


def request_compensation(
    case: Case, c: RequestCompensation, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    require(case, "request_compensation")
    cp = policy.compensation
    if c.currency != cp.currency:
        raise InputRejected("body.currency", f"compensation is decided in {cp.currency}")
    request_id = new_id()
    needs = cp.authority_for(c.amount)
    events: list[DomainEvent] = [
        ev.CompensationRequested(
            request_id=request_id,
            amount=c.amount,
            currency=c.currency,
            reason=c.reason,
            requested_by=by.id,
            needs=needs,
        )
    ]
    if needs == "none":
        events.append(
            ev.CompensationApproved(
                request_id=request_id,
                amount=c.amount,
                currency=c.currency,
                within_agent_limit=True,
            )
        )
    return events


def decide_compensation(
    case: Case, c: DecideCompensation, approve: bool, by: By, now: datetime, policy: Policy
) -> list[DomainEvent]:
    command = "approve_compensation" if approve else "decline_compensation"
    require(case, command)
    request = case.compensation(c.request_id)
    if request is None:
        raise InputRejected("body.request_id", f"no compensation request {c.request_id!r}")
    if request.status != "pending":
        raise CommandRejected(
            case.state.value,
            command,
            allowed_commands(case),
            reason=f"compensation request {c.request_id} is {request.status} already",
        )
    if by.id == request.requested_by:
        raise Forbidden("nobody decides on their own compensation request")
    if by.role is None or not policy.compensation.may_approve(by.role, request.amount):
        needed = policy.compensation.authority_for(request.amount)
        raise Forbidden(
            f"a compensation of {request.amount} {request.currency} needs a"
            f" {'supervisor' if needed == 'none' else needed}"
        )
    decision = ev.CompensationApproved if approve else ev.CompensationDeclined
    return [
        decision(
            request_id=c.request_id,
            decided_by=by.id,
            role=by.role,
            note=c.note,
            amount=request.amount,
            currency=request.currency,
        )
    ]


def resolve(case: Case, c: ResolveCase, by: By, now: datetime, policy: Policy) -> list[DomainEvent]:
    open_actions, pending = case.open_actions, case.pending_compensations
    if case.state not in ALLOWED["resolve"]:
        require(case, "resolve")  # refused, listing what the case accepts
    if (open_actions or pending) and c.override is None:  # refused, saying what to do first
        raise CommandRejected(
            case.state.value,
            "resolve",
            allowed_commands(case),
            reason=(
                f"complete actions {', '.join(open_actions)}"
                if open_actions
                else f"decide compensation requests {', '.join(pending)}"
            )
            + " first, or resolve with a supervisor's override",
        )
    if c.override is not None and by.role not in ("supervisor", "manager"):
        raise Forbidden("only a supervisor or manager can override open actions")
    return [
        ev.CaseResolved(
            complaint_id=case.complaint_id,
            summary=c.summary,
            resolved_by=by.id,
            category=case.category,
            severity=Severity(case.severity),
            root_cause=case.cause.root_cause if case.cause else None,
            remedy=case.agreed.option.remedy if case.agreed else None,
            compensation_awarded=tuple(
                ev.Money(amount=x.amount, currency=x.currency)
                for x in case.compensations
                if x.status == "approved"
            ),
            reopen_count=case.reopen_count,
            override=ev.Override(
                by=by.id,
                role=by.role or "agent",
                reason=c.override.reason,
                open_actions=tuple(open_actions),
                pending_compensation=tuple(pending),
            )
            if c.override is not None
            else None,
        )
    ]


def close(case: Case, c: CloseCase, by: By, now: datetime, policy: Policy) -> list[DomainEvent]:
    require(case, "close")
    return [ev.CaseClosed(complaint_id=case.complaint_id, reason=c.reason, closed_by=by.id)]


def reopen(case: Case, c: ReopenCase, by: By, now: datetime, policy: Policy) -> list[DomainEvent]:
    require(case, "reopen")
    return [
        ev.CaseReopened(
            complaint_id=case.complaint_id,
            reason=c.reason,
            requested_by="agent",
            reopened_by=by.id,
        )
    ]
