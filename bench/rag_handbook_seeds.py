"""Seeds of the `handbook` corpus of `bench.rag_quality_sets`: made-up staff policy paragraphs.

Each seed is (document id, policy paragraph, two questions about it). The questions are
written in other words than the paragraph: what an employee would type, not the policy's
own terms, so lexical overlap is low and the meaning has to carry the match (the kind of
set where dense retrieval wins and BM25 alone does not). Written for tierline; no source.
"""

from __future__ import annotations

POLICIES: list[tuple[str, str, tuple[str, str]]] = [
    (
        "remote-work",
        "Employees may perform their duties from a residential location for up to three "
        "days per calendar week, subject to prior agreement with their line manager. "
        "Core collaboration hours of 10:00 to 15:00 apply regardless of location.",
        (
            "How many days a week am I allowed to do my job from home?",
            "Can I skip coming into the office most of the week?",
        ),
    ),
    (
        "annual-leave",
        "Full-time staff accrue twenty-five days of paid vacation per year. Unused "
        "entitlement of up to five days carries over into the first quarter of the "
        "following year and lapses thereafter.",
        (
            "If I don't take all my holidays, do I lose them at the end of the year?",
            "How much time off do I get each year?",
        ),
    ),
    (
        "sick-leave",
        "An absence due to illness must be reported to the line manager before the start "
        "of the working day. A medical certificate is required from the fourth consecutive "
        "day of absence.",
        (
            "When do I need a doctor's note if I'm unwell and can't work?",
            "I woke up with the flu, who do I tell and by when?",
        ),
    ),
    (
        "parental-leave",
        "Birth and adoptive parents are entitled to eighteen weeks of leave at full salary, "
        "which may be taken in up to three blocks within the first two years after the "
        "child joins the family.",
        (
            "How long can I stay home after my baby arrives and still be paid?",
            "Can I split my time off for a newborn into several parts?",
        ),
    ),
    (
        "expense-claims",
        "Business expenditure is reimbursed against itemised receipts submitted through "
        "the finance portal within sixty days of the purchase. Claims submitted later are "
        "declined unless the finance director grants an exception.",
        (
            "What's the deadline for getting my money back after paying for something for work?",
            "I paid for a client lunch out of pocket two weeks ago, how do I get refunded?",
        ),
    ),
    (
        "travel-booking",
        "All journeys undertaken for the company are arranged through the approved agency. "
        "Rail is preferred for distances under 600 kilometres; air travel in economy class "
        "requires approval from a budget holder.",
        (
            "Am I allowed to fly to a meeting or should I take the train?",
            "Who do I go through to organise a trip for a customer visit?",
        ),
    ),
    (
        "hotel-allowance",
        "Overnight accommodation on business trips is covered up to a nightly ceiling of "
        "180 euros in capital cities and 130 euros elsewhere, breakfast included.",
        (
            "What is the most I can spend on a place to sleep when I'm away for work?",
            "Is there a cap on the room rate when staying somewhere on a work trip?",
        ),
    ),
    (
        "meal-per-diem",
        "A daily subsistence allowance of 45 euros is paid for each full day spent "
        "travelling on company business, reduced pro rata where meals are provided by a "
        "host or conference.",
        (
            "How much do I get for food each day I'm on the road?",
            "Does the company give me money for eating while on a business trip?",
        ),
    ),
    (
        "password-rules",
        "Account credentials must contain at least fourteen characters and are never "
        "reused across systems. Multi-factor authentication is mandatory for every "
        "externally reachable service.",
        (
            "How long does my login secret have to be?",
            "Do I need a second verification step like a code on my phone?",
        ),
    ),
    (
        "lost-device",
        "The loss or theft of a company laptop or phone must be reported to the security "
        "desk within one hour of discovery so that the device can be remotely wiped.",
        (
            "I left my work computer on the train, what should I do?",
            "How quickly must I tell someone that my office mobile was stolen?",
        ),
    ),
    (
        "data-retention",
        "Customer records are kept for seven years after the end of the contractual "
        "relationship and are then securely destroyed, unless a legal hold requires longer "
        "storage.",
        (
            "How long do we hang on to information about former clients?",
            "When are old customer files deleted for good?",
        ),
    ),
    (
        "clean-desk",
        "Documents marked confidential may not be left unattended on workstations. At the "
        "end of each day papers are locked away and screens are locked whenever the user "
        "steps away.",
        (
            "Can I leave sensitive papers lying out overnight?",
            "Do I have to lock my monitor when I go for a coffee?",
        ),
    ),
    (
        "gifts-hospitality",
        "Staff may accept presents or entertainment from suppliers only where the value "
        "does not exceed 50 euros; anything above that is declared to the compliance "
        "office and normally returned.",
        (
            "A vendor sent me an expensive bottle of wine, am I allowed to keep it?",
            "What's the limit on freebies I can take from a business partner?",
        ),
    ),
    (
        "conflict-of-interest",
        "Any personal, financial or family relationship that could influence a business "
        "decision must be disclosed in writing to the line manager before the employee "
        "takes part in that decision.",
        (
            "My brother-in-law is bidding for one of our contracts, what do I need to do?",
            "Do I have to tell anyone if I own shares in a company we buy from?",
        ),
    ),
    (
        "whistleblowing",
        "Suspected wrongdoing can be raised confidentially through the independent "
        "reporting line, by phone or web form, and the company forbids any retaliation "
        "against a person who reports in good faith.",
        (
            "How can I anonymously flag fraud I noticed without getting punished?",
            "Is there a safe way to report my boss for something unethical?",
        ),
    ),
    (
        "overtime",
        "Hours worked beyond the contractual week are compensated as time off in lieu at "
        "a rate of one and a half hours per additional hour, provided they were approved "
        "in advance.",
        (
            "Do I get anything back for staying late in the evening?",
            "If I put in extra hours, is it paid out or given as free days?",
        ),
    ),
    (
        "probation",
        "New hires complete a probationary period of six months, during which either party "
        "may end the employment with two weeks' notice. A review meeting takes place at "
        "the end of the third month.",
        (
            "How long before I'm no longer considered a newcomer on trial?",
            "Can I be let go easily in my first months here?",
        ),
    ),
    (
        "notice-period",
        "After the probationary period, the notice period for resignation is three months "
        "to the end of a calendar month for all permanent positions.",
        (
            "If I want to quit, how far ahead must I tell the company?",
            "How much warning do I need to give before leaving my permanent job?",
        ),
    ),
    (
        "training-budget",
        "Each employee has an annual learning budget of 1,500 euros for courses, "
        "certifications and conferences related to their role, approved by their line "
        "manager.",
        (
            "Will the company pay for me to take a course or get certified?",
            "How much money is there for professional development each year?",
        ),
    ),
    (
        "equipment-home",
        "Staff working away from the office receive a one-off allowance of 400 euros "
        "towards a chair, desk or monitor for their domestic workspace.",
        (
            "Can I get reimbursed for furniture for my home office?",
            "Is there money to buy a screen to use at my house?",
        ),
    ),
    (
        "software-install",
        "Only applications listed in the approved catalogue may be installed on company "
        "devices. Requests for additional tools go through the IT service desk for a "
        "security review.",
        (
            "Can I put a program I downloaded myself on my work laptop?",
            "How do I get a new app approved for my computer?",
        ),
    ),
    (
        "email-phishing",
        "Suspicious messages that ask for credentials or payments are forwarded to the "
        "security mailbox and then deleted; links and attachments in them must not be "
        "opened.",
        (
            "I got a weird message asking me to confirm my bank details, what now?",
            "What should I do with a scam mail that looks like it is from the CEO?",
        ),
    ),
    (
        "visitor-access",
        "Guests are registered at reception, wear a visible badge at all times and are "
        "accompanied by their host in every area beyond the lobby.",
        (
            "My friend is coming to see the office, can they walk around on their own?",
            "What are the rules for bringing outsiders into the building?",
        ),
    ),
    (
        "dress-code",
        "Business casual attire is the norm on company premises; client-facing meetings "
        "call for formal wear unless the client indicates otherwise.",
        (
            "Do I need to wear a suit every day?",
            "What clothes are appropriate when meeting customers?",
        ),
    ),
    (
        "social-media",
        "Employees speaking about the company on public platforms make clear that they "
        "express personal views and do not disclose unpublished financial results or "
        "product plans.",
        (
            "Can I post about upcoming products on my personal Twitter account?",
            "Am I allowed to talk about where I work online?",
        ),
    ),
    (
        "harassment",
        "Bullying, intimidation and unwanted conduct of a sexual nature are prohibited. "
        "Complaints are investigated by human resources within ten working days and kept "
        "confidential.",
        (
            "A colleague keeps making me uncomfortable with inappropriate comments, who helps?",
            "How long does it take HR to look into a complaint about someone's behaviour?",
        ),
    ),
    (
        "fire-safety",
        "When the alarm sounds, occupants leave by the nearest marked exit without using "
        "lifts and gather at the assembly point in the north car park for a roll call.",
        (
            "Where do we meet outside if the building has to be evacuated?",
            "Should I take the elevator down when the sirens go off?",
        ),
    ),
    (
        "first-aid",
        "Trained responders are listed on every floor next to the kitchen, and a "
        "defibrillator is mounted beside the main reception desk.",
        (
            "Someone collapsed, where is the heart restart machine?",
            "Who can help if a coworker gets hurt at work?",
        ),
    ),
    (
        "pension",
        "The company contributes six percent of base salary to the occupational retirement "
        "scheme and matches additional employee contributions up to a further three "
        "percent.",
        (
            "How much does my employer put toward my old-age savings?",
            "If I save more for retirement, will the firm add to it?",
        ),
    ),
    (
        "bonus",
        "The annual variable pay is determined by company results and individual "
        "objectives and is paid with the March salary to employees still under contract "
        "on that date.",
        (
            "When does the yearly performance payout arrive?",
            "Do I still get my incentive money if I leave in February?",
        ),
    ),
    (
        "salary-review",
        "Pay is reviewed once a year in October against market benchmarks and performance; "
        "adjustments take effect from the first of January.",
        (
            "When can I expect a raise to be discussed?",
            "How often are wages looked at and when do changes kick in?",
        ),
    ),
    (
        "referral",
        "An employee who recommends a candidate hired into a permanent role receives a "
        "reward of 2,000 euros after the new colleague completes probation.",
        (
            "Do I get something for bringing a friend into the company?",
            "Is there a payout if someone I suggested gets a job here?",
        ),
    ),
    (
        "internal-moves",
        "Staff may apply for open positions in other departments after twelve months in "
        "their current role, informing their line manager when they apply.",
        (
            "Can I switch teams, and how long do I have to wait first?",
            "I want to transfer to another department, is my boss told?",
        ),
    ),
    (
        "sabbatical",
        "After five years of service, employees may request an unpaid career break of one "
        "to six months, with a guaranteed return to an equivalent position.",
        (
            "Can I take a few months off to travel and still have a job when I come back?",
            "Is an extended unpaid break possible after working here a long time?",
        ),
    ),
    (
        "jury-duty",
        "Time spent on civic obligations such as jury service or election staffing is "
        "granted as paid leave on presentation of the official summons.",
        (
            "I've been called to serve on a court panel, will I lose pay?",
            "Do I get paid when I'm away doing public duties like counting votes?",
        ),
    ),
    (
        "bereavement",
        "On the death of a close relative, employees receive five days of paid "
        "compassionate leave, and further unpaid days may be agreed with the manager.",
        (
            "My grandmother passed away, how much time can I take?",
            "Is there paid leave for attending a family funeral?",
        ),
    ),
    (
        "company-car",
        "Pool vehicles are booked through the facilities calendar, used for business "
        "purposes only and returned with a full tank; private journeys are not permitted.",
        (
            "Can I borrow one of the firm's cars for a weekend trip?",
            "How do I reserve a vehicle for visiting a client?",
        ),
    ),
    (
        "parking",
        "Spaces in the staff garage are allocated by lottery every quarter, with priority "
        "spaces reserved for colleagues with a disability or a medical need.",
        (
            "How do I get a spot to leave my car at the office?",
            "Are some places kept for people who have trouble walking?",
        ),
    ),
    (
        "bicycle",
        "The company leases bicycles to employees through salary sacrifice over 36 months "
        "and provides secure storage and showers at the main site.",
        (
            "Is there a scheme to help me buy a bike for commuting?",
            "Where can I wash up after cycling in to work?",
        ),
    ),
    (
        "health-insurance",
        "Supplementary medical cover is provided for employees and can be extended to "
        "spouses and children at a subsidised rate through the benefits portal.",
        (
            "Can I add my kids to my private doctor plan?",
            "Does the company offer extra coverage for hospital and clinic costs?",
        ),
    ),
    (
        "eye-tests",
        "Staff who use screens for most of the day are entitled to a free eye examination "
        "every two years and a contribution of up to 150 euros towards glasses needed for "
        "display work.",
        (
            "Will work pay for my spectacles if I stare at a monitor all day?",
            "How often can I get my vision checked for free?",
        ),
    ),
    (
        "purchase-approval",
        "Purchases above 5,000 euros require three competitive quotes and sign-off by the "
        "procurement team before an order is placed.",
        (
            "What do I need before buying something expensive from a supplier?",
            "Do I have to compare several offers for a big order?",
        ),
    ),
    (
        "signature-authority",
        "Contracts binding the company may only be signed by directors or by holders of a "
        "written delegation of authority stating the value limit.",
        (
            "Am I allowed to put my name on an agreement with a customer?",
            "Who is permitted to sign deals on behalf of the business?",
        ),
    ),
    (
        "open-source",
        "Contributions of company code to public projects need the approval of the "
        "engineering lead and the legal team, who check licence compatibility.",
        (
            "Can I publish a fix I wrote at work to a community project on GitHub?",
            "Who has to okay sharing our code with the outside world?",
        ),
    ),
    (
        "ai-tools",
        "Confidential or personal data may not be entered into public generative AI "
        "services; only the internally hosted assistant is approved for such material.",
        (
            "Can I paste client details into ChatGPT to summarise them?",
            "Which chatbot am I allowed to use with sensitive information?",
        ),
    ),
    (
        "backups",
        "Files stored on personal drives are not backed up; work products are saved to "
        "the shared team folders, which are copied every night and kept for ninety days.",
        (
            "If I delete a document by accident, can it be recovered?",
            "Where should I save my work so it doesn't get lost?",
        ),
    ),
    (
        "printing",
        "Printing is released at the device with the staff card; colour output and "
        "volumes above 500 pages per month are charged to the department.",
        (
            "Why doesn't my document come out until I tap my badge?",
            "Does my team pay if I make lots of colourful copies?",
        ),
    ),
    (
        "flexible-hours",
        "Working time may start between 07:00 and 10:00 and end between 15:00 and 19:00, "
        "provided the contractual weekly hours are met and team coverage is ensured.",
        (
            "Can I come in early and leave early in the afternoon?",
            "What time do I have to arrive in the morning?",
        ),
    ),
    (
        "part-time",
        "Requests to reduce contractual hours are answered in writing within one month; "
        "they may only be refused for documented operational reasons.",
        (
            "Can I ask to work fewer hours, and can they say no?",
            "How long until I hear back about going down to four days?",
        ),
    ),
    (
        "second-job",
        "Secondary employment requires the prior written consent of human resources and "
        "must not compete with the company or impair the employee's performance.",
        (
            "Am I allowed to freelance on weekends on top of this role?",
            "Do I need permission to take on another gig in the evenings?",
        ),
    ),
    (
        "alcohol",
        "Alcohol is served on company premises only at approved events, and no one may "
        "work, drive on company business or operate machinery under its influence.",
        (
            "Can we have beers at the office on Friday afternoon?",
            "Is it okay to go back to work after drinking at lunch?",
        ),
    ),
    (
        "smoking",
        "Smoking and vaping are permitted only in the designated shelter behind the "
        "loading bay and never within ten metres of an entrance.",
        (
            "Where can I have a cigarette during my break?",
            "Is it fine to use an e-cig just outside the front door?",
        ),
    ),
    (
        "pets",
        "Dogs may accompany staff on Fridays in the designated pet-friendly zones, "
        "provided they are vaccinated, leashed in shared areas and registered with "
        "facilities.",
        (
            "Can I bring my puppy to the office?",
            "Which day are animals welcome at work?",
        ),
    ),
    (
        "relocation",
        "Employees moving at the company's request receive the cost of removal, two months "
        "of temporary housing and a single payment equal to one month's salary.",
        (
            "If the firm asks me to move to another city, what help do I get?",
            "Who pays for the movers when I'm transferred abroad?",
        ),
    ),
    (
        "exit-interview",
        "Departing employees are invited to a confidential conversation with human "
        "resources in their final week and return all equipment and badges on their last "
        "day.",
        (
            "What happens in my last week before leaving the company?",
            "When do I have to hand back my laptop when I quit?",
        ),
    ),
    (
        "references",
        "Written references for former staff are issued only by human resources and "
        "confirm dates of employment and job title; managers do not give personal "
        "references on company letterhead.",
        (
            "Can my old boss write me a recommendation for a new employer?",
            "Who confirms my work history to a future company?",
        ),
    ),
    (
        "volunteering",
        "Each employee may take two paid days per year to volunteer for a registered "
        "charity, arranged with their manager like other leave.",
        (
            "Can I spend a workday helping at a food bank and still get paid?",
            "Is there time given for community service?",
        ),
    ),
    (
        "mobile-phones",
        "Company phones come with an unlimited domestic plan; roaming data abroad must be "
        "enabled in advance through the IT portal to avoid excess charges.",
        (
            "Will my work cell cost a fortune if I use the internet overseas?",
            "Do I need to do anything before using my business phone on a trip abroad?",
        ),
    ),
    (
        "meeting-rooms",
        "Conference rooms are reserved through the calendar system for at most half a day; "
        "unused bookings are released automatically after fifteen minutes.",
        (
            "I booked a room but nobody showed up, does it stay mine?",
            "How long can I hold a space for a workshop?",
        ),
    ),
]
