-- Generates demo rows set-wise in PostgreSQL. Parameters: start and end (the demo's time range),
-- users (per tenant), seed (for repeatable randomness). A few rows are invalid on purpose:
-- negative token counts, an intent outside the allowed set, and out-of-range ratings.
SELECT setseed(%(seed)s);

TRUNCATE app.feedback, app.messages, app.conversations, app.users, app.tenants;

INSERT INTO app.tenants (id, name, plan) VALUES
    ('acme', 'Acme Corp', 'enterprise'),
    ('globex', 'Globex', 'team'),
    ('initech', 'Initech', 'starter');

INSERT INTO app.users (id, tenant_id, email, created_at)
SELECT t.id || '-u' || lpad(n::text, 3, '0'), t.id, t.id || '.user' || n || '@example.com',
       %(start)s::timestamptz - interval '30 days'
FROM app.tenants t, generate_series(1, %(users)s) n;

-- Each user opens 1-4 conversations spread over the range. The count is drawn per user in a
-- subquery (volatile, so never flattened) and fed to a LATERAL generate_series: a random() filter
-- on a plain generate_series would be evaluated once and reused for every user.
INSERT INTO app.conversations (id, tenant_id, user_id, title, created_at)
SELECT u.id || '-c' || k, u.tenant_id, u.id,
       (ARRAY['Billing question', 'Reset my password', 'Plan upgrade', 'API error 500', 'Export data',
              'Feature request', 'Integration help'])[1 + floor(random() * 7)::int],
       %(start)s::timestamptz + random() * (%(end)s::timestamptz - %(start)s::timestamptz) * 0.9
FROM (SELECT id, tenant_id, 1 + floor(random() * 4)::int AS conversations FROM app.users ORDER BY id) u
CROSS JOIN LATERAL generate_series(1, u.conversations) k
ORDER BY u.id, k;

-- Conversations have 2-24 messages (drawn per conversation, as above), alternating user / assistant
-- turns a few minutes apart, never past the range end.
INSERT INTO app.messages (id, tenant_id, conversation_id, user_id, role, content, token_count, intent, created_at)
SELECT c.id || '-m' || i, c.tenant_id, c.id, c.user_id,
       CASE WHEN mod(i, 2) = 1 THEN 'user' ELSE 'assistant' END,
       CASE WHEN mod(i, 2) = 1
            THEN (ARRAY['How do I', 'Why does', 'Can you help me', 'I cannot', 'Please explain how to'])[1 + floor(random() * 5)::int]
                 || ' ' || (ARRAY['update my billing details', 'reset the password', 'export my chats',
                                  'connect the Slack integration', 'upgrade to the team plan'])[1 + floor(random() * 5)::int]
                 || CASE WHEN random() < 0.6 THEN '?' ELSE '.' END
            ELSE repeat('Here is what you can do: open Settings, choose the right section and follow the steps. ',
                        1 + floor(random() * 4)::int)
       END,
       CASE WHEN random() < 0.01 THEN -1 ELSE 5 + floor(random() * 400)::int END,
       CASE WHEN mod(i, 2) = 0 THEN NULL
            WHEN random() < 0.01 THEN 'gibberish'
            ELSE (ARRAY['billing', 'account', 'technical', 'sales', 'other'])[1 + floor(random() * 5)::int] END,
       least(c.created_at + (i - 1) * interval '3 minutes' + random() * interval '90 seconds',
             %(end)s::timestamptz - interval '1 second')
FROM (SELECT id, tenant_id, user_id, created_at, 2 + floor(random() * 23)::int AS messages
      FROM app.conversations ORDER BY id) c
CROSS JOIN LATERAL generate_series(1, c.messages) i
ORDER BY c.id, i;

-- About a third of assistant answers get rated 1-5; a few ratings are broken (0 or 42).
INSERT INTO app.feedback (id, tenant_id, message_id, user_id, rating, comment, created_at)
SELECT m.id || '-f', m.tenant_id, m.id, m.user_id,
       CASE WHEN random() < 0.015 THEN (ARRAY[0, 42])[1 + floor(random() * 2)::int]
            ELSE 1 + floor(random() * 5)::int END,
       CASE WHEN random() < 0.3 THEN 'Thanks, that helped' END,
       least(m.created_at + random() * interval '5 minutes', %(end)s::timestamptz - interval '1 second')
FROM app.messages m
WHERE m.role = 'assistant' AND random() < 0.35;
