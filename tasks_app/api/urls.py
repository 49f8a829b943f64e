from django.urls import path
from rest_framework.routers import SimpleRouter

from .calendar import CalendarView
from .events import EventView
from .executions import ExecutionView
from .feeds import CalendarFeedView
from .health import HealthView
from .integrations import GoogleCredentialView
from .push import PushKeyView, PushSubscriptionListView, PushSubscriptionView
from .reports import ReportDownloadView, ReportListView, ReportView
from .schedules import SchedulePreviewView
from .stats import StatsView
from .tasks import TaskViewSet
from .variables import VariableListView, VariableView
from .webhooks import (
    InboundWebhookView,
    TaskWebhookListView,
    TaskWebhookRotateView,
    TaskWebhookView,
)

router = SimpleRouter()
router.trailing_slash = "/?"  # the guide's paths have no trailing slash; accept both
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("executions/<uuid:pk>", ExecutionView.as_view(), name="execution"),
    path("schedules/preview", SchedulePreviewView.as_view(), name="schedule-preview"),
    path("stats", StatsView.as_view(), name="stats"),
    path("calendar", CalendarView.as_view(), name="calendar"),
    path("calendar/feed", CalendarFeedView.as_view(), name="calendar-feed-url"),
    path("reports", ReportListView.as_view(), name="report-list"),
    path("reports/<uuid:pk>", ReportView.as_view(), name="report"),
    path("reports/<uuid:pk>/download", ReportDownloadView.as_view(), name="report-download"),
    path("webhooks/<str:webhook_id>", InboundWebhookView.as_view(), name="webhook-receive"),
    path("events", EventView.as_view(), name="events"),
    path("tasks/<uuid:pk>/webhooks", TaskWebhookListView.as_view(), name="task-webhooks"),
    path(
        "tasks/<uuid:pk>/webhooks/<str:webhook_id>",
        TaskWebhookView.as_view(),
        name="task-webhook",
    ),
    path(
        "tasks/<uuid:pk>/webhooks/<str:webhook_id>/rotate",
        TaskWebhookRotateView.as_view(),
        name="task-webhook-rotate",
    ),
    path("variables", VariableListView.as_view(), name="variables"),
    path("variables/<str:name>", VariableView.as_view(), name="variable"),
    path("integrations/google", GoogleCredentialView.as_view(), name="google-credentials"),
    path("push/key", PushKeyView.as_view(), name="push-key"),
    path("push/subscriptions", PushSubscriptionListView.as_view(), name="push-subscriptions"),
    path("push/subscriptions/<uuid:pk>", PushSubscriptionView.as_view(), name="push-subscription"),
    *router.urls,
]
