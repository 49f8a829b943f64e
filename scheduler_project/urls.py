from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasks_app.web.calendar import calendar_page
from tasks_app.web.feed import calendar_feed

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("tasks_app.api.urls")),
    path("calendar/", calendar_page, name="calendar-page"),
    path("calendar/<slug:token>.ics", calendar_feed, name="calendar-feed"),
]
