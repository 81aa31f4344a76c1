"""A queue of books on PostgreSQL (procrastinate): `csm-offload book --enqueue` plans a book and
queues it, `csm-offload worker` processes (any number, on any machines) make its chapters
through the router and the shared journal, and `csm-offload queue` shows where it stands.

    dsn.py      the queue's database: the journal's `postgresql://` URL, connections, errors
    schema.py   procrastinate's schema (once) and our tables, by numbered migrations
    options.py  the book options that travel from the client to the workers
    state.py    books and chapters: their rows, their transitions, the `queue` snapshot
    app.py      the procrastinate App for a DSN, with our tasks
    tasks.py    the tasks: prepare a book, make a chapter, finish a book
    work.py     what those tasks do, through the same code as `csm-offload book`
    stalled.py  jobs of dead workers back to the queue
    enqueue.py  the client side of `book --enqueue`
    worker.py   the worker loop of `csm-offload worker`

docs/queue.md says how it fits together.
"""
