"""Server-rendered pages (session login) and the public iCal feed."""
